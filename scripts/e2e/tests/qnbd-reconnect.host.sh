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
e2e_out_disk 512M
# The kernel logs the dead connection, the requests stuck on it and the new socket; the guest
# script fails on I/O errors itself.
e2e_boot_vm --env E2E_NBD_ERRORS_OK=1 --env "RECONNECT_OPTS=${RECONNECT_OPTS---reconnect-timeout 60}" \
    --add "$stage" qnbd-reconnect qnbd-reconnect.guest.sh -- "${E2E_OUT_ARGS[@]}"
e2e_wait_result qnbd-reconnect
e2e_out_images x
e2e_out_ext4 x
finish
