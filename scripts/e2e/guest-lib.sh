# Helpers for the guest scripts (busybox sh), sourced as: . /e2e/guest-lib.sh
# A script passes by exiting 0; what it writes with detail() is appended to its PASS line.
# die MSG makes MSG the FAIL line's detail.
set -eu

log() { echo "[guest $E2E_NAME] $*"; }

die() {
    echo "$*" >/tmp/e2e-fail
    log "FAIL: $*"
    exit 1
}

detail() { printf '%s ' "$*" >>/tmp/e2e-detail; }

# run CMD...: CMD, logged; its failure is the test's failure.
run() {
    log "+ $*"
    "$@" || die "failed (exit $?): $*"
}

# nbd_size DEV: the device's size in 512-byte sectors (0 while it is not connected).
nbd_size() { cat "/sys/block/${1#/dev/}/size" 2>/dev/null || echo 0; }

# wait_nbd DEV [SECS=30] [PID]: waits until DEV is connected (has a size); fails at once
# should process PID (the one connecting it) end first.
wait_nbd() {
    i=0
    while [ "$(nbd_size "$1")" = 0 ]; do
        i=$((i + 1))
        [ $i -le $((${2:-30} * 10)) ] || die "$1 not connected after ${2:-30} s"
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
            die "process $3 ended before $1 was connected"
        fi
        sleep 0.1
    done
}

# wait_pidof NAME [SECS=5]: prints the pid of the process NAME once it runs; 1 if it never does.
wait_pidof() {
    i=0
    until pidof "$1"; do
        i=$((i + 1))
        [ $i -le $((${2:-5} * 10)) ] || return 1
        sleep 0.1
    done
}

# wait_nbd_gone DEV [SECS=30]: waits until DEV is disconnected.
wait_nbd_gone() {
    i=0
    while [ "$(nbd_size "$1")" != 0 ]; do
        i=$((i + 1))
        [ $i -le $((${2:-30} * 10)) ] || die "$1 still connected after ${2:-30} s"
        sleep 0.1
    done
}

# nbd_kernel_errors: prints the kernel's messages of NBD trouble: a request that timed out (the
# kernel then moves it to another connection, so the I/O itself may still succeed), a broken
# connection, a reply to no request, an error reply, an I/O error. /init fails a test that
# passed if there are any, unless the host allowed them (e2e_boot_vm --env E2E_NBD_ERRORS_OK=1).
# "Send disconnect failed" is not one: a disconnect that finds a socket already shut logs it.
nbd_kernel_errors() {
    dmesg | grep -E 'nbd[0-9]+: (Connection timed out|Receive control failed|Send control failed|Send data failed|Receive data failed|Unexpected reply|Double reply|Dead connection|Attempted send on invalid socket|Possible stuck request|Other side returned error)|I/O error, dev nbd'
}

# drop_caches DEV: later reads of DEV (and of file systems on it) go to the NBD server.
drop_caches() {
    sync
    blockdev --flushbufs "$1"
    echo 3 >/proc/sys/vm/drop_caches
}

# ext4_roundtrip DEV: mkfs.ext4, mount, files of random data, checksums, umount, e2fsck -fn,
# remount and check the checksums, umount. Every read after the umount goes to the server.
ext4_roundtrip() {
    dev=$1
    run mkfs.ext4 -q -F "$dev"
    run mount -t ext4 "$dev" /mnt
    mkdir -p /mnt/dir/sub
    for n in 1 2 3 4; do
        run dd if=/dev/urandom of=/mnt/file$n bs=1M count=$((n * 2)) status=none
    done
    for n in 1 2 3 4 5 6 7 8; do
        head -c $((n * 1000 + 17)) /dev/urandom >/mnt/dir/sub/small$n
    done
    (cd /mnt && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum) >/tmp/sums
    log "$(wc -l </tmp/sums) files, $(du -sk /mnt | cut -f1) KiB written"
    run sync
    run umount /mnt
    drop_caches "$dev"
    run e2fsck -fn "$dev"
    run mount -t ext4 "$dev" /mnt
    (cd /mnt && sha256sum -c -s /tmp/sums) || die "checksums differ after remount"
    run umount /mnt
    drop_caches "$dev"
}

# qnbd_guest_logging: syslog to /tmp/syslog (an attached qnbd logs there once its stderr is
# /dev/null) and sanitizer reports to /tmp/asan.PID.
qnbd_guest_logging() {
    syslogd -O /tmp/syslog 2>/dev/null || true
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=/tmp/asan"
}

# qnbd_log_errors FILE...: prints the first line of a sanitizer report or of an error qnbd
# logged in the files, /tmp/syslog and /tmp/asan.*; nothing if there is none.
qnbd_log_errors() {
    cat "$@" /tmp/syslog /tmp/asan.* 2>/dev/null |
        grep -m1 -E 'SUMMARY: |ERROR: |runtime error:|internal error|critical|terminate called|daemon\.(err|crit)|qnbd\[[0-9]+\] (error|critical):' || true
}

# wait_pid_gone PID [SECS=10]: waits for process PID to exit; fails after SECS, with the state
# and kernel stack of each of its threads.
wait_pid_gone() {
    i=0
    while kill -0 "$1" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt $((${2:-10} * 10)) ]; then
            for t in /proc/"$1"/task/*; do
                echo "thread ${t##*/}: $(cut -d' ' -f2-3 "$t/stat" 2>/dev/null) in $(cat "$t/wchan" 2>/dev/null)"
                cat "$t/stack" 2>/dev/null
            done
            die "process $1 still running after ${2:-10} s"
        fi
        sleep 0.1
    done
}
