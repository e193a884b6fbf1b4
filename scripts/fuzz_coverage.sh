#!/usr/bin/env bash
# Source-based line coverage of the fuzz corpora: builds the targets again with clang's
# -fprofile-instr-generate -fcoverage-mapping (build-fuzz-cov), replays each target's seeds and
# corpus (build-fuzz/fuzz-work/TARGET/corpus, as scripts/fuzz.sh left it) without fuzzing, and
# prints llvm-cov's line coverage of the product files each target exercises.
# Usage: scripts/fuzz_coverage.sh [TARGET...]   TARGET: protocol connection image qcow2
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(protocol connection image qcow2)
flags="-fprofile-instr-generate -fcoverage-mapping"
cmake -S . -B build-fuzz-cov -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQNBD_FUZZ=ON -DQNBD_TESTS=OFF \
    -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fprofile-instr-generate" >/dev/null
cmake --build build-fuzz-cov -j "$(nproc)" --target fuzz
[[ -d build-fuzz/fuzz-seeds ]] || bash tests/fuzz/make_seeds.sh build-fuzz/fuzz-seeds
declare -A files=(
    [protocol]="protocol/"
    [connection]="protocol/ server/connection server/negotiation server/transmission server/request"
    [image]="qcow2/ image/"
    [qcow2]="qcow2/header qcow2/l2_entry qcow2/refcount_codec qcow2/compress qcow2/tables"
)
for t in "${targets[@]}"; do
    prof=build-fuzz-cov/$t.profraw
    dirs=(build-fuzz-cov/fuzz-seeds-$t)
    rm -rf "${dirs[0]}" && cp -r "build-fuzz/fuzz-seeds/$t" "${dirs[0]}"
    [[ -d build-fuzz/fuzz-work/$t/corpus ]] && dirs+=(build-fuzz/fuzz-work/$t/corpus)
    LLVM_PROFILE_FILE=$prof "build-fuzz-cov/fuzz_$t" -runs=0 -timeout=60 "${dirs[@]}" \
        >"build-fuzz-cov/$t.log" 2>&1
    llvm-profdata-14 merge -sparse "$prof" -o "build-fuzz-cov/$t.profdata"
    pattern=$(printf '%s|' ${files[$t]})
    echo "== fuzz_$t (inputs: $(grep -o 'INITED.*corp: [0-9]*' "build-fuzz-cov/$t.log" | grep -o '[0-9]*$'))"
    llvm-cov-14 report "build-fuzz-cov/fuzz_$t" -instr-profile="build-fuzz-cov/$t.profdata" \
        | awk -v p="${pattern%|}" '
            BEGIN { print "file", "lines", "missed", "cover" }
            $1 ~ "^(" p ")" { print $1, $8, $9, $10; n += $8; m += $9 }
            END { printf "total %d %d %.1f%%\n", n, m, n ? 100 * (n - m) / n : 0 }' \
        | column -t
done
