#!/usr/bin/env bash
# The long crash-state enumeration (docs/RELIABILITY.md): the [crash] tests of the test build
# with more requests and more states per segment, over several seeds.
#   scripts/crash-states.sh [SCALE] [SEEDS] [FIRST]    (defaults: 8, 4, 1)
# SCALE multiplies the requests per worker and the crash states per segment of ctest's run
# (QNBD_CRASH_SCALE); each seed is a different run (QNBD_TEST_SEED = 0xc0ffee + FIRST,
# FIRST + 1, ...; FIRST continues an earlier campaign). Prints the states checked.
# The run uses an optimised build without sanitizers (build-crash, about twice as many states
# per second as the ASan/UBSan test build, which ctest already runs the states under);
# QNBD_CRASH_BUILD=build-test uses the sanitized test build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-8}
seeds=${2:-4}
first=${3:-1}
build=${QNBD_CRASH_BUILD:-build-crash}
scripts/install-deps.sh
if [[ $build == build-test ]]; then
    cmake -S . -B build-test -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQNBD_SANITIZE=ON >/dev/null
else
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target qnbd_tests
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
total=0
start=$(date +%s)
for ((s = first; s < first + seeds; s++)); do
    seed=$((0xc0ffee + s))
    out=$(QNBD_CRASH_SCALE=$scale QNBD_TEST_SEED=$seed "$build/tests/qnbd_tests" '[crash]' 2>&1) || {
        printf '%s\n' "$out" | grep -v '^\[20' | tail -60
        echo "crash-states: FAILED with seed $seed (rerun: QNBD_CRASH_SCALE=$scale QNBD_TEST_SEED=$seed $build/tests/qnbd_tests '[crash]')" >&2
        exit 1
    }
    n=$(printf '%s\n' "$out" | grep -o '[0-9]* crash states' | awk '{s += $1} END {print s + 0}')
    total=$((total + n))
    echo "seed $seed: $n crash states checked"
done
echo "crash-states: $total crash states checked with scale $scale over $seeds seeds in $(($(date +%s) - start)) s; none corrupt, nothing lost"
