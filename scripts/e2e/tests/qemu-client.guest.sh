# Guest side of qemu-client: the guest's virtio disks are NBD exports that QEMU itself (the
# host's qemu-system) connects to. fio writes random blocks with crc32c checksums on each disk
# and reads them back, with O_DIRECT; the disks QEMU gives are E2E_DISKS (vda, vdb, ...).
. /e2e/guest-lib.sh

for d in $E2E_DISKS; do
    [ -b "/dev/$d" ] || die "no /dev/$d"
    cat >/tmp/$d.fio <<JOBS
[global]
filename=/dev/$d
direct=1
ioengine=libaio
iodepth=16
rw=randwrite
bsrange=4k-128k
size=48M
verify=crc32c
verify_fatal=1
do_verify=1
[write-and-verify]
JOBS
    log "+ fio /tmp/$d.fio"
    rc=0
    fio --output=/tmp/$d.out /tmp/$d.fio || rc=$?
    cat /tmp/$d.out
    [ $rc -eq 0 ] || die "fio on /dev/$d exited with $rc"
    grep -q 'err= 0' /tmp/$d.out || die "fio on /dev/$d reported errors"
    detail "$d=$(($(cat /sys/block/$d/size) * 512))"
done
sync
