#!/bin/bash
# qnbd inside the guest: the binary with its shared libraries and an image are carried in with
# the initramfs, qnbd -c /dev/nbd0 attaches the image, mkfs.ext4/files/e2fsck/checksums run on
# it, qnbd -d detaches it and qnbd exits. The image comes back out through a raw virtio disk;
# on the host it must be clean and hold a clean ext4 file system.
source "$(dirname "$0")/../lib.bash"
e2e_need qemu-img e2fsck tar

stage=$T/stage
mkdir -p "$stage/images"
mkimg "$stage/images/x.qcow2" 128M
e2e_stage_qnbd "$stage"
# The image leaves the guest as a tar stream written to this disk (tar stops at its end marker,
# so the disk's size does not matter).
truncate -s 512M "$T/out.raw"
e2e_boot_vm --add "$stage" qnbd-in-guest qnbd-in-guest.guest.sh -- \
    -drive "file=$T/out.raw,format=raw,if=none,id=out0,cache=unsafe" \
    -device virtio-blk-pci,drive=out0
e2e_wait_result qnbd-in-guest
mkdir -p "$T/out"
tar -xf "$T/out.raw" -C "$T/out" || fail "no image in the guest's output disk"
[[ -f $T/out/x.qcow2 ]] || fail "x.qcow2 is not in the guest's output"
img_check "$T/out/x.qcow2"
qemu-img convert -f qcow2 -O raw "$T/out/x.qcow2" "$T/x.raw" || fail "qemu-img convert"
e2fsck -fn "$T/x.raw" >"$T/e2fsck.log" 2>&1 || { cat "$T/e2fsck.log" >&2; fail "e2fsck on the host"; }
finish
