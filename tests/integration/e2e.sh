#!/bin/bash
# The end-to-end tests (scripts/e2e.sh) under ctest: the Linux kernel's NBD client in a QEMU
# guest (TCG) against qnbd, and qnbd itself in the guest; every test in scripts/e2e/tests/.
# Skipped (77) only when QEMU cannot start. Time limits are set so that the whole run ends
# within ctest's 600 s even when guests hang.
source "$(dirname "$0")/lib/common.bash"
source "${QNBD_SOURCE_DIR:-$INTEG_DIR/../..}/scripts/e2e/lib.bash"

export E2E_VM_TIMEOUT=${E2E_VM_TIMEOUT:-100}
export E2E_TEST_TIMEOUT=${E2E_TEST_TIMEOUT:-120}
e2e_run_tests
case $? in
    0) finish ;;
    77) skip "QEMU cannot start" ;;
    *) fail "e2e tests failed" ;;
esac
