#!/bin/bash
# Server lifetime: without -t it waits for a first client, then exits 0 after the last client
# leaves (also after clients that only read or list exports); with -t it stays; SIGTERM and
# SIGINT while a client is writing with requests in flight, while a client stalls in the
# handshake, and while the -e 1 limit is reached with another client queued, stop it promptly
# with exit 0; every image is qemu-img check clean afterwards with the flushed data in place.
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io nbdinfo
need_python_nbd

verify_77() {
    local out
    out=$(qemu-io -f qcow2 -r -c "read -P 0x77 0 4M" "$1" 2>&1)
    grep -qiE "fail|error" <<<"$out" && fail "$1: flushed data missing: $out"
    return 0
}

# Without -t: waits for the first client however long, exits after the last one leaves.
mkimg "$T/a.qcow2" 64M
start_server once "$T/a.qcow2"
sleep 1.5
check_alive once "without -t before any client"
"$PYTHON" - "$(uri once)" <<'PY' || fail "client of the non-persistent server"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x77" * (4 << 20), 0)
h.shutdown()
PY
wait_server_exit once 20 0
grep -q "disconnected" "${SRV_LOG[once]}" || fail "no disconnect log line"
img_check "$T/a.qcow2"
verify_77 "$T/a.qcow2"

# With -t: survives clients coming and going.
start_server pers -t "$T/a.qcow2"
for i in 1 2 3; do
    run_t 30 nbdinfo --size "$(uri pers)" >/dev/null || fail "nbdinfo $i against -t"
done
sleep 0.3
check_alive pers "with -t after clients left"
stop_server pers
img_check "$T/a.qcow2"

# SIGTERM / SIGINT with a client writing, requests in flight.
for sig in TERM INT; do
    mkimg "$T/sig$sig.qcow2" 64M
    start_server sig$sig -t -e 0 "$T/sig$sig.qcow2"
    "$PYTHON" "$PY_DIR/busy.py" "$(uri sig$sig)" "$T/ready$sig" >"$T/busy$sig.log" 2>&1 &
    busy=$!
    track_pid "$busy"
    for ((i = 0; i < 400; i++)); do [[ -e $T/ready$sig ]] && break; sleep 0.05; done
    [[ -e $T/ready$sig ]] || { cat "$T/busy$sig.log" >&2; fail "busy client did not start"; }
    sleep 0.5
    kill -$sig "${SRV_PID[sig$sig]}"
    wait_server_exit sig$sig 20 0
    grep -q "signal" "${SRV_LOG[sig$sig]}" || fail "no log line for SIG$sig"
    wait "$busy" 2>/dev/null
    img_check "$T/sig$sig.qcow2"
    verify_77 "$T/sig$sig.qcow2"
done
# SIGTERM with a client stalled in the handshake (long --handshake-timeout): exits promptly.
mkimg "$T/st.qcow2" 64M
start_server stall -t -e 0 --handshake-timeout 60 "$T/st.qcow2"
"$PYTHON" - "${SRV_PORT[stall]}" "$T/stall-ready" <<'PY' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.recv(18)
open(sys.argv[2], "w").close()
time.sleep(60)
PY
track_pid "$!"
for ((i = 0; i < 200; i++)); do [[ -e $T/stall-ready ]] && break; sleep 0.05; done
kill -TERM "${SRV_PID[stall]}"
wait_server_exit stall 5 0
img_check "$T/st.qcow2"

# Without -t and -e 2: the server stays while one of two clients is still connected.
start_server two -e 2 "$T/a.qcow2"
"$PYTHON" - "$(uri two)" "${SRV_PID[two]}" <<'PY' || fail "two clients, non-persistent"
import os, sys, time, nbd
a = nbd.NBD(); a.connect_uri(sys.argv[1])
b = nbd.NBD(); b.connect_uri(sys.argv[1])
a.shutdown()
time.sleep(1)
os.kill(int(sys.argv[2]), 0)          # still running
assert b.pread(4096, 0) == b"\x77" * 4096
b.shutdown()
PY
wait_server_exit two 20 0

# SIGTERM on a default (-e 1) server with its one client connected and another queued.
start_server full -t "$T/st.qcow2"
"$PYTHON" - "$(uri full)" "${SRV_PORT[full]}" "$T/full-ready" <<'PY' &
import socket, sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x77" * (4 << 20), 0)
h.flush()
q = socket.create_connection(("127.0.0.1", int(sys.argv[2])))   # waits behind -e 1
open(sys.argv[3], "w").close()
time.sleep(60)
PY
track_pid "$!"
for ((i = 0; i < 400; i++)); do [[ -e $T/full-ready ]] && break; sleep 0.05; done
[[ -e $T/full-ready ]] || fail "client of the -e 1 server did not start"
kill -TERM "${SRV_PID[full]}"
wait_server_exit full 10 0
img_check "$T/st.qcow2"
verify_77 "$T/st.qcow2"

# Without -t, clients that do not write (nbdinfo) also end the server, cleanly.
start_server list "$T/a.qcow2"
run_t 30 nbdinfo --list "$(uri list)" >/dev/null || fail "nbdinfo --list"
wait_server_exit list 20 0
start_server info -e 0 "$T/a.qcow2"
run_t 30 nbdinfo "$(uri info)" >/dev/null || fail "nbdinfo"
wait_server_exit info 20 0
img_check "$T/a.qcow2"
finish
