#!/bin/bash
# Socket activation as qemu-nbd does it: with LISTEN_PID equal to qnbd's pid and LISTEN_FDS=1,
# qnbd serves the listening socket on fd 3 (TCP or unix), refuses -p/-b/-k, and without -t
# exits when the client leaves. Driven by systemd-socket-activate and by libnbd's
# `[ qnbd ... ]` syntax from nbdinfo, nbdcopy and nbdfuse.
source "$(dirname "$0")/lib/common.bash"
need qemu-img nbdinfo nbdcopy systemd-socket-activate
need_python_nbd

mkimg "$T/a.qcow2" 64M
qemu-io -f qcow2 -c "write -P 0x5a 0 1M" "$T/a.qcow2" >/dev/null || fail "qemu-io write"
head -c 8M /dev/urandom >"$T/disk.raw"

# systemd-socket-activate: TCP, qnbd started on the first connection, gone when it leaves.
port=$(free_port)
systemd-socket-activate -l "127.0.0.1:$port" "$QNBD" "$T/a.qcow2" >"$T/sa.log" 2>&1 &
sa=$!
track_pid "$sa"
for ((i = 0; i < 100; i++)); do grep -q "Listening on" "$T/sa.log" && break; sleep 0.05; done
out=$(run_t 20 nbdinfo --size "nbd://127.0.0.1:$port/") || fail "nbdinfo through socket activation: $(cat "$T/sa.log")"
[[ $out == $((64 << 20)) ]] || fail "size through socket activation: $out"
for ((i = 0; i < 200; i++)); do alive "$sa" || break; sleep 0.05; done
alive "$sa" && fail "qnbd without -t did not exit after its client left"
wait "$sa" || fail "socket-activated qnbd exited with $?: $(cat "$T/sa.log")"
grep -q "socket activation" "$T/sa.log" || fail "no log line about the activated socket"
check_log_clean "$T/sa.log"
say "ok: TCP socket activation, exit when the client leaves"

# A unix socket with -t: serves several clients in turn.
systemd-socket-activate -l "$T/sa.sock" "$QNBD" -t "$T/a.qcow2" >"$T/sau.log" 2>&1 &
sau=$!
track_pid "$sau"
for ((i = 0; i < 100; i++)); do [[ -S $T/sa.sock ]] && break; sleep 0.05; done
for n in 1 2; do
    run_t 20 nbdinfo --size "nbd+unix:///?socket=$T/sa.sock" >/dev/null || fail "unix client $n"
done
alive "$sau" || fail "socket-activated qnbd -t exited"
kill -TERM "$sau"
wait "$sau" || fail "qnbd -t under socket activation exited with $? on SIGTERM"
say "ok: unix socket activation with -t"

# Listening options conflict with an activated socket.
port=$(free_port)
systemd-socket-activate -l "127.0.0.1:$port" "$QNBD" -p 1234 "$T/a.qcow2" >"$T/sap.log" 2>&1 &
sap=$!
track_pid "$sap"
for ((i = 0; i < 100; i++)); do grep -q "Listening on" "$T/sap.log" && break; sleep 0.05; done
run_t 20 nbdinfo "nbd://127.0.0.1:$port/" >/dev/null 2>&1 && fail "qnbd -p under socket activation served"
wait "$sap"
grep -q "cannot be used with socket activation" "$T/sap.log" || fail "-p with activation: $(cat "$T/sap.log")"
say "ok: -p refused with socket activation"

# libnbd's [ ... ] syntax: nbdinfo, nbdcopy, nbdfuse.
out=$(run_t 30 nbdinfo --size -- [ "$QNBD" -f raw "$T/disk.raw" ]) || fail "nbdinfo -- [ qnbd -f raw ]"
[[ $out == $((8 << 20)) ]] || fail "nbdinfo [ qnbd ] size: $out"
run_t 30 nbdcopy -- [ "$QNBD" -r -f raw "$T/disk.raw" ] "$T/copy.raw" || fail "nbdcopy -- [ qnbd ]"
cmp "$T/disk.raw" "$T/copy.raw" || fail "nbdcopy through [ qnbd ] differs"
run_t 30 nbdcopy -- "$T/disk.raw" [ "$QNBD" "$T/a.qcow2" ] || fail "nbdcopy into [ qnbd image ]"
img_check "$T/a.qcow2"
qemu-img convert -f qcow2 -O raw "$T/a.qcow2" "$T/back.raw" || fail "qemu-img convert"
cmp -n $((8 << 20)) "$T/disk.raw" "$T/back.raw" || fail "the image does not hold what nbdcopy wrote"
if command -v nbdfuse >/dev/null && [[ -e /dev/fuse ]]; then
    mkdir "$T/mnt"
    nbdfuse -r "$T/mnt" [ "$QNBD" -r -f raw "$T/disk.raw" ] &
    fuse=$!
    track_pid "$fuse"
    for ((i = 0; i < 200; i++)); do [[ -f $T/mnt/nbd ]] && break; sleep 0.05; done
    cmp "$T/disk.raw" "$T/mnt/nbd" || fail "nbdfuse [ qnbd ] differs"
    fusermount3 -u "$T/mnt" 2>/dev/null || fusermount -u "$T/mnt" 2>/dev/null || umount "$T/mnt"
    wait "$fuse" || fail "nbdfuse exited with $?"
    say "ok: nbdfuse [ qnbd ]"
fi
say "ok: libnbd [ qnbd ... ] from nbdinfo and nbdcopy"
finish
