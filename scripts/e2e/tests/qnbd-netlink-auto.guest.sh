# Guest side of qnbd-netlink-auto: `qnbd -c auto` lets the kernel pick a free device through
# netlink and prints its name; an ext4 round trip runs on it; qnbd -d detaches it, the daemon
# exits and the device is free again (the next -c auto gets it back). Two qnbd -c auto started
# at once get two different devices. The images go out through /dev/vda as a tar stream.
. /e2e/guest-lib.sh
qnbd_guest_logging

# attach_auto IMAGE OUT: d=$(qnbd -c auto IMAGE), as a script would run it (the command
# substitution ends only once the daemon has let go of its stdout), and $d in OUT; fails unless
# $d is a device attached through netlink (it has a sysfs "backend": the image) with the
# image's size.
attach_auto() {
    d=$(qnbd -c auto "$1" 2>>/tmp/qnbd.log) || die "qnbd -c auto $1 failed (exit $?): $(tail -n 3 /tmp/qnbd.log)"
    echo "$d" >"$2"
    case $d in
        /dev/nbd[0-9]*) ;;
        *) die "qnbd -c auto $1 printed '$d', not a device" ;;
    esac
    [ -b "$d" ] || die "$d is not a block device"
    [ "$(nbd_size "$d")" = $((128 << 11)) ] || die "$d has $(nbd_size "$d") sectors after qnbd -c auto"
    [ "$(cat "/sys/block/${d#/dev/}/backend")" = "$1" ] ||
        die "$d: backend '$(cat "/sys/block/${d#/dev/}/backend" 2>/dev/null)', not $1"
}

# detach DEV: qnbd -d DEV; the daemon serving it (sysfs pid) exits and DEV is free.
detach() {
    p=$(cat "/sys/block/${1#/dev/}/pid") || die "$1 has no pid attribute"
    run qnbd -d "$1"
    wait_pid_gone "$p"
    wait_nbd_gone "$1" 10
}

attach_auto /images/x.qcow2 /tmp/dev
dev=$(cat /tmp/dev)
log "qnbd -c auto attached /images/x.qcow2 to $dev"
ext4_roundtrip "$dev"
detach "$dev"

# A device detached goes back to the free ones: it is not destroyed, and is picked again.
[ -b "$dev" ] || die "$dev was removed by the detach"
attach_auto /images/x.qcow2 /tmp/again
[ "$(cat /tmp/again)" = "$dev" ] || die "after detaching $dev, qnbd -c auto picked $(cat /tmp/again)"
run mount -t ext4 "$dev" /mnt
(cd /mnt && sha256sum -c -s /tmp/sums) || die "checksums differ after the second attach"
run umount /mnt
detach "$dev"

# Two at once: the kernel hands each a different free device.
attach_auto /images/y.qcow2 /tmp/a &
pa=$!
attach_auto /images/z.qcow2 /tmp/b &
pb=$!
wait $pa || exit 1
wait $pb || exit 1
a=$(cat /tmp/a) b=$(cat /tmp/b)
log "concurrent qnbd -c auto: $a and $b"
[ "$a" != "$b" ] || die "two concurrent qnbd -c auto both got $a"
run dd if=/dev/urandom of=/tmp/blob bs=64k count=16 status=none
run dd if=/tmp/blob of="$a" bs=64k oflag=direct status=none
run dd if=/tmp/blob of="$b" bs=64k seek=1 oflag=direct status=none
detach "$a"
detach "$b"

cat /tmp/qnbd.log /tmp/syslog /tmp/asan.* 2>/dev/null || true
why=$(qnbd_log_errors /tmp/qnbd.log)
[ -z "$why" ] || die "qnbd logged: $why"
grep -q "attached through netlink" /tmp/qnbd.log || die "qnbd did not log an attach through netlink"
run tar -cf /dev/vda -C /images x.qcow2 y.qcow2 z.qcow2
run sync
detail "devices=$dev,$a,$b"
