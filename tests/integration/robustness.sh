#!/bin/bash
# Misbehaving clients: random bytes after connecting, garbage option headers, an option with a
# 4 GiB payload, half handshakes, garbage and truncated requests in transmission, resets, and
# clients stalling in the handshake (dropped after --handshake-timeout 2, but idle negotiated
# clients are not) -- each dropped with a log line while a well-behaved client keeps working; a
# burst of 16 concurrent clients; clients that send thousands of requests and never read the
# replies (the server stops reading them, memory stays bounded, others are served). The server
# never crashes and exits 0 on SIGTERM.
source "$(dirname "$0")/lib/common.bash"
need qemu-img
need_python_nbd

mkimg "$T/a.qcow2" 64M
start_server a -t -e 0 --handshake-timeout 2 "$T/a.qcow2"
py robust.py "$(uri a)" 2
check_alive a "after the misbehaving clients"
log=${SRV_LOG[a]}
grep -q "bad client flags" "$log" || fail "no log line for random bytes instead of client flags"
grep -q "bad option header" "$log" || fail "no log line for a garbage option header"
grep -q "handshake not finished within 2 s" "$log" || fail "no log line for the handshake timeout"
grep -qi "magic" "$log" || fail "no log line for a garbage request"
py slowreader.py "$(uri a)" "${SRV_PID[a]}"
check_alive a "after clients that never read replies"
stop_server a
img_check "$T/a.qcow2"
finish
