#!/usr/bin/env bash
# Builds the libFuzzer targets with clang 14 (ASan + UBSan) and runs each for SECONDS (default
# 60; hours for a real campaign), one after the other. Seeds are generated afresh
# (tests/fuzz/make_seeds.sh); each target's corpus in build-fuzz/fuzz-work/TARGET/corpus grows
# from run to run. Prints execs/s, coverage and corpus size per target; exits 1 if any target
# found a failing input (saved as build-fuzz/fuzz-work/TARGET/crash-* and the like).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   TARGET: protocol connection image qcow2
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(protocol connection image qcow2)
scripts/install-deps.sh
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQNBD_FUZZ=ON -DQNBD_TESTS=OFF \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz
bash tests/fuzz/make_seeds.sh build-fuzz/fuzz-seeds
status=0
for t in "${targets[@]}"; do
    bash tests/fuzz/run_target.sh "build-fuzz/fuzz_$t" "build-fuzz/fuzz-seeds/$t" \
        "build-fuzz/fuzz-work/$t" "$seconds" || status=1
done
exit $status
