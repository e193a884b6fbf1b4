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
e2e_out_disk 1G
e2e_boot_vm --add "$stage" qnbd-netlink-auto qnbd-netlink-auto.guest.sh -- "${E2E_OUT_ARGS[@]}"
e2e_wait_result qnbd-netlink-auto
e2e_out_images x y z
e2e_out_ext4 x
# The concurrent attaches wrote the same 1 MiB at offset 0 of y and 64 KiB into z.
e2e_out_raw y
e2e_out_raw z
cmp -n $((1 << 20)) "$T/y.raw" <(tail -c +$((64 * 1024 + 1)) "$T/z.raw") ||
    fail "y.qcow2 and z.qcow2 do not hold the data written through their devices"
finish
