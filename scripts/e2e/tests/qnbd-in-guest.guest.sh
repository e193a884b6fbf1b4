# Guest side of qnbd-in-guest: qnbd itself (carried in with its libraries) attaches
# /images/x.qcow2 to /dev/nbd0 (qnbd -c, which returns once attached), an ext4 round trip runs
# on it, qnbd -d detaches it and the qnbd daemon must have exited without logging an error. The image then goes out through the raw virtio disk
# /dev/vda as a tar stream, for the host to check.
. /e2e/guest-lib.sh
img=/images/x.qcow2

# The daemon's stderr is /dev/null once it is attached: its log goes to syslog, its
# sanitizer reports to files.
syslogd -O /tmp/syslog 2>/dev/null || true
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=/tmp/asan"
# A failing attach is reported by the command's exit status, as with qemu-nbd -c.
if qnbd -c /dev/nbd1 /images/missing.qcow2 2>/tmp/fail.log; then die "qnbd -c with a missing image succeeded"; fi
grep -q missing.qcow2 /tmp/fail.log || die "qnbd -c failure not reported: $(cat /tmp/fail.log)"
# qnbd -c returns once /dev/nbd0 is attached and its partitions scanned, as qemu-nbd -c does.
qnbd -c /dev/nbd0 "$img" 2>/tmp/qnbd.log || {
    rc=$?
    cat /tmp/qnbd.log /tmp/asan.* 2>/dev/null
    die "qnbd -c failed (exit $rc)"
}
[ "$(nbd_size /dev/nbd0)" != 0 ] || die "qnbd -c returned before /dev/nbd0 was attached"
pid=$(pidof qnbd) || die "no qnbd daemon after qnbd -c"
log "qnbd pid $pid serves $img on /dev/nbd0"
ext4_roundtrip /dev/nbd0
run qnbd -d /dev/nbd0
wait_nbd_gone /dev/nbd0
i=0
while kill -0 "$pid" 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 100 ] || die "qnbd (pid $pid) still running 10 s after qnbd -d"
    sleep 0.1
done
cat /tmp/qnbd.log /tmp/syslog /tmp/asan.* 2>/dev/null || true
# The first line of a sanitizer report or of a logged error goes into the FAIL line.
why=$(cat /tmp/qnbd.log /tmp/syslog /tmp/asan.* 2>/dev/null |
    grep -m1 -E 'SUMMARY: |ERROR: |runtime error:|internal error|critical|terminate called') || true
[ -z "$why" ] || die "qnbd logged: $why"
grep -q "flush requests" /tmp/syslog 2>/dev/null || log "note: no syslog output seen"
run tar -cf /dev/vda -C /images x.qcow2
run sync
detail "image=$(stat -c %s "$img")"
