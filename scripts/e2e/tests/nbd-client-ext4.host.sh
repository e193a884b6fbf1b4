#!/bin/bash
# nbd-client (Debian's, in the guest) on /dev/nbd0 against qnbd on the host: mkfs.ext4, files
# of random data with their checksums, e2fsck -fn, remount and check, disconnect. qnbd (without
# -t) then exits by itself with 0, the image is clean and holds a clean ext4 file system.
source "$(dirname "$0")/../lib.bash"
e2e_need qemu-img e2fsck

mkimg "$T/disk.qcow2" 256M
start_server srv -x disk -e 8 "$T/disk.qcow2"
e2e_boot_vm --fwd "${SRV_PORT[srv]}" ext4 nbd-client-ext4.guest.sh
e2e_wait_result ext4
wait_server_exit srv 20 0
img_check "$T/disk.qcow2"
# The host's view of the same data: the file system in the image is clean.
qemu-img convert -f qcow2 -O raw "$T/disk.qcow2" "$T/disk.raw" || fail "qemu-img convert"
e2fsck -fn "$T/disk.raw" >"$T/e2fsck.log" 2>&1 || { cat "$T/e2fsck.log" >&2; fail "e2fsck on the host"; }
finish
