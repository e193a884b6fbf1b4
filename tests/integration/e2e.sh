#!/bin/bash
# The end-to-end tests (scripts/e2e.sh) under ctest: the Linux kernel's NBD client in a QEMU
# guest (TCG) against qnbd, and qnbd itself in the guest; every test in scripts/e2e/tests/, one
# VM at a time (about 5 minutes on 2 cores). Skipped (77) only when QEMU cannot start. A guest
# that hangs costs at most E2E_TEST_TIMEOUT; ctest's timeout for this entry (tests/CMakeLists.txt)
# leaves room for every test to run into it. qnbd-reconnect takes longest (about 90 s with the
# sanitizers): the kernel resends the requests a killed server had taken only after 30 s.
source "$(dirname "$0")/lib/common.bash"
source "${QNBD_SOURCE_DIR:-$INTEG_DIR/../..}/scripts/e2e/lib.bash"

export E2E_VM_TIMEOUT=${E2E_VM_TIMEOUT:-150}
export E2E_TEST_TIMEOUT=${E2E_TEST_TIMEOUT:-180}
e2e_run_tests
case $? in
    0) finish ;;
    77) skip "QEMU cannot start" ;;
    *) fail "e2e tests failed" ;;
esac
