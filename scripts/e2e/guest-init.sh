#!/bin/sh
# /init of the e2e guest (busybox sh; PID 1). Mounts the kernel file systems, loads the
# modules listed by the host, brings up the network, runs the test script named in
# /e2e/env, prints "E2E-RESULT <name> PASS|FAIL <detail>" on the console and powers off.
# PID 1 must never exit (the kernel would panic), so every path ends in poweroff -f.
export PATH=/usr/sbin:/usr/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
. /e2e/env

result() {
    # A leading newline keeps the line whole should the kernel have printed half a line.
    printf '\nE2E-RESULT %s %s\n' "$E2E_NAME" "$*"
    sync
    poweroff -f
    sleep 60
}

moddir=/lib/modules/$E2E_KVER
[ -f "$moddir/e2e-load-order" ] || result "FAIL no $moddir/e2e-load-order (kernel $E2E_KVER)"
while read -r m; do
    insmod "$moddir/$m" || result "FAIL insmod $m failed"
done <"$moddir/e2e-load-order"

# User-mode networking: the guest is 10.0.2.15/24 and the host side 10.0.2.2 (static, which
# is quicker than DHCP); the forwarded NBD address 10.0.2.100 is on the same subnet.
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi

echo "e2e: guest up after $(cut -d' ' -f1 /proc/uptime) s, running $E2E_SCRIPT"
rm -f /tmp/e2e-fail
set -o pipefail
sh "/e2e/tests/$E2E_SCRIPT" 2>&1 | tee /tmp/e2e-out
rc=$?
if [ $rc -eq 0 ] && [ -z "${E2E_NBD_ERRORS_OK:-}" ]; then
    errs=$(. /e2e/guest-lib.sh; nbd_kernel_errors) || true
    if [ -n "$errs" ]; then
        echo "$errs"
        echo "kernel: $(echo "$errs" | head -n 1 | sed 's/^\[[ 0-9.]*\] //')" >/tmp/e2e-fail
    fi
fi
if [ $rc -eq 0 ] && [ ! -s /tmp/e2e-fail ]; then
    result "PASS $(cat /tmp/e2e-detail 2>/dev/null)"
fi
echo "----- guest dmesg, last 30 lines -----"
dmesg | tail -n 30
if [ -s /tmp/e2e-fail ]; then
    result "FAIL $(head -n 1 /tmp/e2e-fail)"
fi
result "FAIL exit $rc: $(tail -n 1 /tmp/e2e-out)"
