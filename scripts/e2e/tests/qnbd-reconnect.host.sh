#!/bin/bash
# qnbd --reconnect-timeout in the guest (see qnbd-reconnect.guest.sh): the serving qnbd is
# killed under a mounted ext4 that is being written, a new qnbd reattaches the device, the
# writer never sees an I/O error and every synced file survives; without a reconnect timeout
# (netlink, and --ioctl as qemu-nbd attaches) the same kill gives the file system I/O errors.
# The image comes back out: the second qnbd rebuilt its refcounts (the first left it dirty) and
# closed it, so qemu-img check finds it fully clean, and it holds a clean ext4.
# RECONNECT_OPTS (default "--reconnect-timeout 60") are passed to qnbd -c in the guest; with
# RECONNECT_OPTS= the test fails with I/O errors, which is what qemu-nbd's users see.
source "$(dirname "$0")/../lib.bash"
e2e_need qemu-img e2fsck tar

stage=$T/stage
mkdir -p "$stage/images"
mkimg "$stage/images/x.qcow2" 128M
# The two devices attached without a reconnect timeout, to show what qemu-nbd's users see.
mkimg "$stage/images/y.qcow2" 16M
mkimg "$stage/images/z.qcow2" 16M
e2e_stage_qnbd "$stage"
truncate -s 512M "$T/out.raw"
# The kernel logs the dead connection, the requests stuck on it and the new socket; the guest
# script fails on I/O errors itself.
e2e_boot_vm --env E2E_NBD_ERRORS_OK=1 --env "RECONNECT_OPTS=${RECONNECT_OPTS---reconnect-timeout 60}" \
    --add "$stage" qnbd-reconnect qnbd-reconnect.guest.sh -- \
    -drive "file=$T/out.raw,format=raw,if=none,id=out0,cache=unsafe" \
    -device virtio-blk-pci,drive=out0
e2e_wait_result qnbd-reconnect
mkdir -p "$T/out"
tar -xf "$T/out.raw" -C "$T/out" || fail "no image in the guest's output disk"
[[ -f $T/out/x.qcow2 ]] || fail "x.qcow2 is not in the guest's output"
img_check "$T/out/x.qcow2"
qemu-img convert -f qcow2 -O raw "$T/out/x.qcow2" "$T/x.raw" || fail "qemu-img convert"
e2fsck -fn "$T/x.raw" >"$T/e2fsck.log" 2>&1 || { cat "$T/e2fsck.log" >&2; fail "e2fsck on the host"; }
finish
