#!/bin/bash
# qnbd -c auto in the guest (see qnbd-netlink-auto.guest.sh): the kernel picks the device
# through netlink, qnbd prints it, two concurrent attaches get different devices. On the
# host every image must be clean and x.qcow2 must hold the guest's clean ext4 file system.
source "$(dirname "$0")/../lib.bash"
e2e_need qemu-img e2fsck tar

stage=$T/stage
mkdir -p "$stage/images"
for i in x y z; do mkimg "$stage/images/$i.qcow2" 128M; done
e2e_stage_qnbd "$stage"
truncate -s 1G "$T/out.raw"
e2e_boot_vm --add "$stage" qnbd-netlink-auto qnbd-netlink-auto.guest.sh -- \
    -drive "file=$T/out.raw,format=raw,if=none,id=out0,cache=unsafe" \
    -device virtio-blk-pci,drive=out0
e2e_wait_result qnbd-netlink-auto
mkdir -p "$T/out"
tar -xf "$T/out.raw" -C "$T/out" || fail "no images in the guest's output disk"
for i in x y z; do
    [[ -f $T/out/$i.qcow2 ]] || fail "$i.qcow2 is not in the guest's output"
    img_check "$T/out/$i.qcow2"
done
qemu-img convert -f qcow2 -O raw "$T/out/x.qcow2" "$T/x.raw" || fail "qemu-img convert"
e2fsck -fn "$T/x.raw" >"$T/e2fsck.log" 2>&1 || { cat "$T/e2fsck.log" >&2; fail "e2fsck on the host"; }
# The concurrent attaches wrote the same 1 MiB at offset 0 of y and 64 KiB into z.
qemu-img convert -f qcow2 -O raw "$T/out/y.qcow2" "$T/y.raw" || fail "qemu-img convert y"
qemu-img convert -f qcow2 -O raw "$T/out/z.qcow2" "$T/z.raw" || fail "qemu-img convert z"
cmp -n $((1 << 20)) "$T/y.raw" <(tail -c +$((64 * 1024 + 1)) "$T/z.raw") ||
    fail "y.qcow2 and z.qcow2 do not hold the data written through their devices"
finish
