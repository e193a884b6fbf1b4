#!/bin/bash
# Hostile clients, each next to a well-behaved client that keeps writing and verifying its data
# (py/hostile.py): 2,000 handshakes stalled after the greeting and 300 announcing a 32 MiB
# option payload (bounded memory per connection, all dropped by --handshake-timeout), option
# payloads too big to keep or to read, a wrong request magic, 4 GiB lengths on every command,
# unknown commands and flags (NBD_EINVAL, connection kept), a WRITE announcing 64 MiB (NBD_EINVAL
# without reading it, then closed), resets mid-payload and mid-reply, NBD_CMD_DISC behind 64
# WRITEs (all answered, then persisted: read back with qemu-io after a clean stop). Then with
# -e 8: 2,000 silent connections queue behind the limit and a newcomer gets in once they go, or
# once the handshake timeout drops stallers. The server's memory and descriptors come back down,
# it never crashes and exits 0.
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io
need_python_nbd

# Memory bounds are the point here: a small ASan quarantine, so freed buffers leave the RSS.
export ASAN_OPTIONS=${ASAN_OPTIONS}:quarantine_size_mb=16
ulimit -n "$(ulimit -Hn)"
mkimg "$T/a.qcow2" 8G
start_server a -t -e 0 --handshake-timeout 2 "$T/a.qcow2"
py hostile.py "$(uri a)" "${SRV_PID[a]}" 2
check_alive a "after the hostile clients"
log=${SRV_LOG[a]}
grep -q "handshake not finished within 2 s" "$log" || fail "no log line for the handshake timeout"
grep -q "WRITE payload larger than the maximum" "$log" || fail "no log line for the 64 MiB WRITE"
grep -q "magic" "$log" || fail "no log line for the wrong request magic"
say "server peak RSS $(awk '/^VmHWM/ {print $2}' "/proc/${SRV_PID[a]}/status") kB"
stop_server a
img_check "$T/a.qcow2"
# The 64 WRITEs ahead of NBD_CMD_DISC are in the image.
out=$(qemu-io -f qcow2 -r -c "read -P 0x5a 3G 16M" "$T/a.qcow2" 2>&1)
grep -qiE "fail|error" <<<"$out" && fail "the WRITEs ahead of NBD_CMD_DISC are not in the image: $out"

start_server e -t -e 8 --handshake-timeout 1 "$T/a.qcow2"
py hostile.py "$(uri e)" "${SRV_PID[e]}" 1 limited 8
finish
