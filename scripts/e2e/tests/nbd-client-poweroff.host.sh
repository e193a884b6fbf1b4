#!/bin/bash
# A guest that powers off with /dev/nbd0 still attached leaves qnbd serving: once the VM is gone
# the server is alive, nbdinfo and qemu-img connect to it, the data written (O_DIRECT, so
# acknowledged by the server) is there, SIGTERM stops it with 0 and the image is clean.
source "$(dirname "$0")/../lib.bash"
e2e_need qemu-img nbdinfo

mkimg "$T/disk.qcow2" 64M
# -t: without it qnbd would (rightly) exit when the guest's connections end.
start_server srv -t -x disk -e 8 "$T/disk.qcow2"
e2e_boot_vm --fwd "${SRV_PORT[srv]}" poweroff nbd-client-poweroff.guest.sh
e2e_wait_result poweroff
want=${E2E_RESULT_DETAIL#sha256=}
want=${want%% *}
[[ $want =~ ^[0-9a-f]{64}$ ]] || fail "no checksum from the guest: $E2E_RESULT_DETAIL"

# The VM has exited: each guest connection's socat sees its end and closes its TCP connection.
log=${SRV_LOG[srv]}
for ((i = 0; i < 100; i++)); do
    (( $(grep -c ": disconnected" "$log") >= 2 )) && break
    sleep 0.1
done
(( $(grep -c ": disconnected" "$log") >= 2 )) || { cat "$log" >&2; fail "the guest's 2 connections did not end"; }
check_alive srv "after the guest powered off"

u=$(uri srv disk)
run_t 30 nbdinfo "$u" >"$T/nbdinfo.out" || fail "nbdinfo $u"
grep -q "export-size: $((64 << 20))" "$T/nbdinfo.out" || { cat "$T/nbdinfo.out" >&2; fail "nbdinfo: wrong size"; }
run_t 30 qemu-img info "$u" >/dev/null || fail "qemu-img info $u"
run_t 60 qemu-img convert -f raw -O raw "$u" "$T/back.raw" || fail "qemu-img convert $u"
got=$(head -c $((4 << 20)) "$T/back.raw" | sha256sum | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "data read back after the poweroff differs ($got, guest wrote $want)"
stop_server srv 0
img_check "$T/disk.qcow2"
finish
