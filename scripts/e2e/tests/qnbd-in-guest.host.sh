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
e2e_out_disk 512M
e2e_boot_vm --add "$stage" qnbd-in-guest qnbd-in-guest.guest.sh -- "${E2E_OUT_ARGS[@]}"
e2e_wait_result qnbd-in-guest
e2e_out_images x
e2e_out_ext4 x
finish
