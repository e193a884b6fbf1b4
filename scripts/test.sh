#!/usr/bin/env bash
# Runs every test: installs what it needs, builds (Debug) with AddressSanitizer and UBSan, runs ctest.
# Extra arguments go to ctest (e.g. -R integration).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build-test -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQNBD_SANITIZE=ON >/dev/null
cmake --build build-test -j "$(nproc)"
cd build-test
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --output-on-failure -j "$(nproc)" "$@"
