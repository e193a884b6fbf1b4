#!/usr/bin/env bash
# Runs every test: installs what it needs, builds (Debug) with AddressSanitizer and UBSan, runs ctest;
# then builds the libFuzzer targets with clang 14 (build-fuzz) and runs each over its seeds and
# for QNBD_FUZZ_SECONDS (default 25) of fuzzing, two at a time (one per core): a crash fails the run.
# Extra arguments go to the first ctest (e.g. -R integration); QNBD_FUZZ_SECONDS=0 skips fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build-test -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQNBD_SANITIZE=ON >/dev/null
cmake --build build-test -j "$(nproc)"
cd build-test
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --output-on-failure -j "$(nproc)" "$@"
cd ..

fuzz_seconds=${QNBD_FUZZ_SECONDS:-25}
[[ $fuzz_seconds -gt 0 ]] || exit 0
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQNBD_FUZZ=ON -DQNBD_TESTS=OFF \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DQNBD_FUZZ_SECONDS="$fuzz_seconds" >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz
ctest --test-dir build-fuzz --output-on-failure -j "$(nproc)"
