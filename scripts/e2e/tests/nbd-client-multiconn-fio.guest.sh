# Guest side of nbd-client-multiconn-fio: nbd-client -C 4 (four connections, which qnbd allows
# with CAN_MULTI_CONN) and fio writing random blocks with crc32c checksums through all of them,
# then reading everything back and verifying, on the raw device with O_DIRECT.
. /e2e/guest-lib.sh

run nbd-client -N disk -C 4 "$NBD_HOST" "$NBD_PORT" /dev/nbd0
wait_nbd /dev/nbd0
# Four jobs, each on its own 24 MiB region, 4-64 KiB blocks, 8 in flight per job. The kernel
# sends a CPU's requests on one connection (one blk-mq queue per connection), so with the
# guest's 2 CPUs two of the four connections carry the I/O; the jobs are pinned to both CPUs
# (cpus_allowed) so that both do. (Jobs of their own, not numjobs=4, so that fio does not warn
# that the jobs could overwrite each other's blocks.)
cat >/tmp/verify.fio <<JOBS
[global]
filename=/dev/nbd0
direct=1
ioengine=libaio
iodepth=8
rw=randwrite
bsrange=4k-64k
size=24M
verify=crc32c
verify_fatal=1
do_verify=1
group_reporting=1
[j0]
offset=0
cpus_allowed=0
[j1]
offset=32M
cpus_allowed=1
[j2]
offset=64M
cpus_allowed=0
[j3]
offset=96M
cpus_allowed=1
JOBS
log "+ fio /tmp/verify.fio"
rc=0
fio --output=/tmp/fio.out /tmp/verify.fio || rc=$?
cat /tmp/fio.out
[ $rc -eq 0 ] || die "fio exited with $rc"
grep -q 'err= 0' /tmp/fio.out || die "fio reported errors"
drop_caches /dev/nbd0
run nbd-client -d /dev/nbd0
wait_nbd_gone /dev/nbd0
