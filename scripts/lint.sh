#!/usr/bin/env bash
# Static checks of the source tree, run by ctest as static.lint:
#   layers    every #include "dir/..." goes down the layer diagram of docs/ARCHITECTURE.md
#   format    clang-format leaves every source file unchanged
#   lengths   no source file over 600 lines; no function in the product over 60 lines
#             (clang-tidy readability-function-size, needs BUILD_DIR/compile_commands.json)
# Usage: scripts/lint.sh [BUILD_DIR]   (default build-test); exits 1 listing every violation.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-test}
status=0
complain() {
    echo "lint: $*" >&2
    status=1
}

# Which folders each layer may include from (besides itself).
declare -A allowed=(
    [base]=""
    [io]="base"
    [disk]="base io"
    [qcow2]="base io disk"
    [image]="base io disk qcow2"
    [protocol]="base"
    [server]="base io disk qcow2 image protocol"
)
layers=(base io disk qcow2 image protocol server)

for layer in "${layers[@]}"; do
    for f in $(git ls-files "$layer/*.cpp" "$layer/*.hpp"); do
        while IFS= read -r inc; do
            dir=${inc%%/*}
            [[ $dir == "$layer" ]] && continue
            [[ " ${allowed[$layer]} " == *" $dir "* ]] && continue
            complain "$f includes \"$inc\": $layer/ may include only from ${allowed[$layer]:-itself}"
        done < <(sed -n 's/^#include "\([a-z0-9_]*\/[^"]*\)".*/\1/p' "$f")
    done
done

sources=$(git ls-files '*.cpp' '*.hpp')
for f in $sources; do
    n=$(wc -l <"$f")
    ((n > 600)) && complain "$f has $n lines (limit 600)"
    if ! diff -q <(clang-format --style=file "$f") "$f" >/dev/null; then
        complain "$f is not clang-formatted (clang-format -i $f)"
    fi
done

if [[ -f $build/compile_commands.json ]]; then
    product=$(git ls-files "${layers[@]/%//*.cpp}")
    config='{CheckOptions: [{key: readability-function-size.LineThreshold, value: 60}]}'
    out=$(printf '%s\n' $product | xargs -P "$(nproc)" -n 4 clang-tidy -p "$build" --quiet \
        --checks='-*,readability-function-size' --config="$config" 2>/dev/null)
    if grep -q "exceeds recommended size" <<<"$out"; then
        grep -E "exceeds recommended size|lines including whitespace" <<<"$out" >&2
        complain "functions over 60 lines (above)"
    fi
else
    complain "$build/compile_commands.json missing: cannot check function lengths"
fi
exit $status
