#!/bin/bash
# -c/--connect and -d/--disconnect with the kernel NBD client: skipped (77) without /dev/nbd0.
# Otherwise: attach, write and read the block device, detach; the image is clean afterwards.
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io

[[ -b /dev/nbd0 ]] || skip "/dev/nbd0 does not exist (nbd kernel module not loaded: modprobe nbd)"
[[ -w /dev/nbd0 ]] || skip "/dev/nbd0 is not writable by this user"
# Skip when the device is in use.
[[ $(cat /sys/block/nbd0/size 2>/dev/null || echo 0) == 0 ]] || skip "/dev/nbd0 is already in use"

mkimg "$T/a.qcow2" 64M
"$QNBD" -c /dev/nbd0 "$T/a.qcow2" >"$T/kernel.log" 2>&1 &
kpid=$!
track_pid "$kpid"
for ((i = 0; i < 200; i++)); do
    [[ $(cat /sys/block/nbd0/size 2>/dev/null || echo 0) != 0 ]] && break
    alive "$kpid" || { cat "$T/kernel.log" >&2; fail "qnbd -c exited early"; }
    sleep 0.05
done
[[ $(cat /sys/block/nbd0/size) == $(((64 << 20) / 512)) ]] || fail "/dev/nbd0 size $(cat /sys/block/nbd0/size)"
head -c 4M /dev/urandom >"$T/data"
dd if="$T/data" of=/dev/nbd0 bs=1M oflag=direct status=none || fail "dd to /dev/nbd0"
cmp -n $((4 << 20)) "$T/data" <(dd if=/dev/nbd0 bs=1M count=4 iflag=direct status=none) ||
    fail "/dev/nbd0 read back differs"
"$QNBD" -d /dev/nbd0 || fail "qnbd -d /dev/nbd0"
for ((i = 0; i < 200; i++)); do alive "$kpid" || break; sleep 0.05; done
alive "$kpid" && fail "qnbd -c still running after -d"
wait "$kpid" || fail "qnbd -c exited with $?"
check_log_clean "$T/kernel.log"
img_check "$T/a.qcow2"
qemu-img convert -f qcow2 -O raw "$T/a.qcow2" "$T/a.raw" || fail "qemu-img convert"
cmp -n $((4 << 20)) "$T/data" "$T/a.raw" || fail "the image does not hold what was written to /dev/nbd0"
finish
