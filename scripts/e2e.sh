#!/usr/bin/env bash
# End-to-end tests: the Linux kernel's NBD client in a QEMU guest (TCG) against qnbd.
#   scripts/e2e.sh [TEST...]     all tests by default; --list prints their names
# Each test is scripts/e2e/tests/TEST.host.sh (host side) with its guest scripts beside it; see
# scripts/e2e/lib.bash. Prints PASS/FAIL per test and exits 0 only if all passed; 77 (with the
# reason) only when QEMU itself cannot start.
# Uses $QNBD when set; otherwise installs the dependencies and builds build-e2e/qnbd.
# The guest kernel and the base initramfs are cached in ${QNBD_E2E_CACHE:-~/.cache/qnbd-e2e}.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --list ]]; then
    for f in scripts/e2e/tests/*.host.sh; do f=${f##*/}; echo "${f%.host.sh}"; done
    exit 0
fi

if [[ -z ${QNBD:-} ]]; then
    scripts/install-deps.sh
    cmake -S . -B build-e2e -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQNBD_SANITIZE=OFF \
        -DQNBD_TESTS=OFF >/dev/null
    cmake --build build-e2e --target qnbd
    export QNBD=$PWD/build-e2e/qnbd
fi

# The libraries are written for set -uo pipefail without -e (as the integration tests are):
# they check exit codes themselves.
set +e
source scripts/e2e/lib.bash
e2e_run_tests "$@" || fail "e2e tests failed"
exit 0
