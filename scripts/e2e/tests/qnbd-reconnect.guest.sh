# Guest side of qnbd-reconnect.
# First what qemu-nbd's users see, which shows that the checks below can fail: a qnbd attached
# without --reconnect-timeout, through netlink (/dev/nbd1) and with --ioctl as qemu-nbd attaches
# (/dev/nbd2), is killed (kill -9) under a mounted ext4 that a writer writes; the file system
# must get I/O errors, and the dead --ioctl device cannot be attached again while it is mounted.
# Then the feature, on /dev/nbd0: the same kill under the same writer with
# `qnbd -c /dev/nbd0 --reconnect-timeout 60`; the writer blocks without an I/O error, a new
# `qnbd -c /dev/nbd0 --reconnect-timeout 60 IMAGE` reattaches the device and the writer goes on.
# Then: umount, e2fsck -fn clean, every file synced before the kill and every file the writer
# fsync'd (before, during and after the outage) reads back with its checksum; qnbd -d; the image
# goes out through /dev/vda for the host. $RECONNECT_OPTS replace "--reconnect-timeout 60" (with
# RECONNECT_OPTS= the writer gets I/O errors and the test fails).
. /e2e/guest-lib.sh
qnbd_guest_logging
opts=${RECONNECT_OPTS---reconnect-timeout 60}

# attach DEV IMAGE OPTS...: qnbd -c DEV OPTS IMAGE; prints the pid of the daemon serving DEV.
attach() {
    d=$1 i=$2
    shift 2
    qnbd -c "$d" "$@" "$i" 2>>/tmp/qnbd.log ||
        die "qnbd -c $d $* $i failed (exit $?): $(tail -n 3 /tmp/qnbd.log)"
    wait_nbd "$d" 10
    cat "/sys/block/${d#/dev/}/pid"
}

# io_errors DEV: the kernel's messages of I/O errors on DEV and of its file system seeing one.
io_errors() {
    dmesg | grep -E 'I/O error|EXT4-fs (error|warning)|Aborting journal|Remounting filesystem read-only' |
        grep -E "${1#/dev/}([^0-9]|\$)" || true
}

# start_writer DIR TAG N: a background writer of 256 KiB files DIR/fN, each fsync'd (conv=fsync)
# and only then listed with its checksum in /tmp/TAG.sums (names relative to DIR's parent). It
# stops at the first error (the reason in /tmp/TAG.err) or when /tmp/TAG.stop appears. Sets
# $writer; returns once it has written N files.
start_writer() {
    : >"/tmp/$2.sums"
    (
        i=0
        while [ ! -e "/tmp/$2.stop" ]; do
            i=$((i + 1))
            dd if=/dev/urandom of="/tmp/$2.chunk" bs=64k count=4 status=none
            dd if="/tmp/$2.chunk" of="$1/f$i" bs=64k conv=fsync status=none 2>"/tmp/$2.dd" ||
                { echo "f$i: $(cat "/tmp/$2.dd")" >"/tmp/$2.err"; exit 1; }
            echo "$(sha256sum <"/tmp/$2.chunk" | cut -d' ' -f1)  ${1##*/}/f$i" >>"/tmp/$2.sums"
        done
    ) </dev/null >/dev/null 2>&1 &
    writer=$!
    wait_files "$2" "$3" 60
}

# wait_files TAG N SECS: waits until writer TAG has listed N files; returns 1 if it ends first,
# fails after SECS.
wait_files() {
    n=0
    while [ "$(wc -l <"/tmp/$1.sums")" -lt "$2" ]; do
        kill -0 $writer 2>/dev/null || return 1
        n=$((n + 1))
        [ $n -le $(($3 * 10)) ] || die "writer $1 wrote no more than $(wc -l <"/tmp/$1.sums") files in $3 s"
        sleep 0.1
    done
}

# mkfs_mount DEV DIR [MOUNT OPTIONS]: a fresh ext4 on DEV mounted on DIR.
mkfs_mount() {
    run mkfs.ext4 -q -F "$1"
    mkdir -p "$2"
    run mount -t ext4 ${3:+-o "$3"} "$1" "$2"
    mkdir -p "$2/w"
}

# io_errors_within DEV SECS WHAT: fails unless the file system on DEV gets I/O errors within
# SECS (WHAT names the case).
io_errors_within() {
    n=0
    until [ -n "$(io_errors "$1")" ]; do
        n=$((n + 1))
        [ $n -le $(($2 * 10)) ] || die "no I/O error on $1 $2 s after its server ($3) died: the check for them cannot fail"
        sleep 0.1
    done
    log "control: $1 ($3): $(io_errors "$1" | head -n 1)"
}

# What qemu-nbd's users see: /dev/nbd2 attached with --ioctl, as qemu-nbd attaches; the device
# goes when its server does. The server is killed while the file system is idle (noinit_itable:
# no background writes): one killed while the kernel is blocked sending it a request cannot
# exit, as its NBD_DO_IT thread waits for the kernel's sender, which waits for the socket the
# dying process still holds.
p=$(attach /dev/nbd2 /images/z.qcow2 --ioctl)
mkfs_mount /dev/nbd2 /mnt-nbd2 noinit_itable
run sync
log "control: kill -9 the qnbd serving /dev/nbd2 (--ioctl)"
kill -9 "$p"
wait_pid_gone "$p"
start_writer /mnt-nbd2/w nbd2 0
io_errors_within /dev/nbd2 20 "--ioctl"
if qnbd -c /dev/nbd2 --ioctl /images/z.qcow2 2>/tmp/again.log; then
    die "qnbd -c --ioctl attached /dev/nbd2 again while its file system, with a dead server, was mounted"
fi
grep -q 'already in use' /tmp/again.log || die "qnbd -c /dev/nbd2 again: $(cat /tmp/again.log)"
# /dev/nbd1 through netlink without a reconnect timeout, killed under the writer. The device
# stays attached; its I/O fails, but the requests the server had taken hang until qnbd -d (so
# from here on, nothing may sync every file system).
p=$(attach /dev/nbd1 /images/y.qcow2)
mkfs_mount /dev/nbd1 /mnt-nbd1
start_writer /mnt-nbd1/w nbd1 1 || die "the writer on /dev/nbd1 failed before the kill"
log "control: kill -9 the qnbd serving /dev/nbd1 (netlink, no reconnect timeout)"
kill -9 "$p"
wait_pid_gone "$p"
io_errors_within /dev/nbd1 20 "netlink, no reconnect timeout"
# The netlink device stays attached; qnbd -d ends it, failing the requests stuck on it. Both
# devices are released once their file systems are unmounted.
run qnbd -d /dev/nbd1
touch /tmp/nbd1.stop /tmp/nbd2.stop
wait || true
run umount /mnt-nbd1
run umount /mnt-nbd2
wait_nbd_gone /dev/nbd1 10
wait_nbd_gone /dev/nbd2 10

# The feature.
# shellcheck disable=SC2086 # $opts are options
pid=$(attach /dev/nbd0 /images/x.qcow2 $opts)
mkfs_mount /dev/nbd0 /mnt
mkdir -p /mnt/before
for n in 1 2 3 4; do
    run dd if=/dev/urandom of=/mnt/before/f$n bs=256k count=$((n * 2)) status=none
done
run sync
(cd /mnt && sha256sum before/*) >/tmp/sums
start_writer /mnt/w nbd0 5 || die "the writer failed before the kill: $(cat /tmp/nbd0.err)"
t0=$(cut -d' ' -f1 /proc/uptime)
log "kill -9 $pid with $(wc -l </tmp/nbd0.sums) files written"
kill -9 "$pid"
wait_pid_gone "$pid"
sleep 3
before=$(wc -l </tmp/nbd0.sums)
kill -0 $writer 2>/dev/null ||
    die "the writer ended while no server ran: $(cat /tmp/nbd0.err 2>/dev/null) $(io_errors nbd0 | head -n 1)"
[ -z "$(io_errors nbd0)" ] || die "I/O errors while the device waited: $(io_errors nbd0 | head -n 1)"
[ "$(nbd_size /dev/nbd0)" != 0 ] || die "/dev/nbd0 was released when its server died"
log "writer alive and waiting; reattaching"
# shellcheck disable=SC2086 # $opts are options
pid=$(attach /dev/nbd0 /images/x.qcow2 $opts)
# The writer goes on: 5 more files, written after the reattach. Requests the dead server had
# taken are sent again when the kernel's request timer (30 s) fires.
wait_files nbd0 $((before + 5)) 120 || true
t1=$(cut -d' ' -f1 /proc/uptime)
touch /tmp/nbd0.stop
wait $writer || die "the writer failed: $(cat /tmp/nbd0.err 2>/dev/null) $(io_errors nbd0 | head -n 1)"
log "writer done: $(wc -l </tmp/nbd0.sums) files, $before before the reattach; 5 more $(echo "$t1 - $t0" | bc 2>/dev/null || echo "?") s after the kill"
run umount /mnt
[ -z "$(io_errors nbd0)" ] || die "kernel: $(io_errors nbd0 | head -n 1)"
drop_caches /dev/nbd0
run e2fsck -fn /dev/nbd0
run mount -t ext4 -o ro /dev/nbd0 /mnt
(cd /mnt && sha256sum -c -s /tmp/sums) || die "files synced before the kill differ"
(cd /mnt && sha256sum -c -s /tmp/nbd0.sums) || die "files the writer fsync'd differ"
run umount /mnt
dmesg | grep -E 'nbd0' | tail -n 20
run qnbd -d /dev/nbd0
wait_pid_gone "$pid"
wait_nbd_gone /dev/nbd0 10
cat /tmp/qnbd.log /tmp/syslog /tmp/asan.* 2>/dev/null || true
why=$(qnbd_log_errors /tmp/qnbd.log)
[ -z "$why" ] || die "qnbd logged: $why"
grep -q "nbd0 reattached" /tmp/qnbd.log || die "the second qnbd did not log a reattach"
run tar -cf /dev/vda -C /images x.qcow2
run sync
detail "files=$(wc -l </tmp/nbd0.sums) before_reattach=$before"
