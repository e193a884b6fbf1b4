#!/bin/bash
# Error replies, each followed by a valid request on the same connection: EINVAL for
# out-of-range and bad flags, ENOSPC for writes past the end, EOVERFLOW for a too-large DF
# read, EPERM on a read-only export (-r); refused WRITE payloads are consumed. 32 MiB requests
# work; a WRITE announcing more than 32 MiB closes only that connection without the server
# reading the payload; a zero-length BLOCK_STATUS gets an error or a valid reply. The server
# logs each refusal and never crashes.
source "$(dirname "$0")/lib/common.bash"
need qemu-img
need_python_nbd

mkimg "$T/a.qcow2" 64M
start_server a -t -e 0 "$T/a.qcow2"
py errors.py "$(uri a)" rw
check_alive a "after the error tests"
grep -q "refused" "${SRV_LOG[a]}" || fail "refused requests are not logged"
py oversize.py "$(uri a)"
check_alive a "after the oversized WRITE"
grep -q "WRITE payload larger than the maximum" "${SRV_LOG[a]}" ||
    fail "no log line for the oversized WRITE"
# The server's memory stayed bounded: it never buffered the oversized payload.
rss_kb=$(awk '/^VmHWM/ {print $2}' "/proc/${SRV_PID[a]}/status")
say "server peak RSS ${rss_kb} kB"
((rss_kb < 1500000)) || fail "server peak RSS ${rss_kb} kB: did it read the oversized payload?"
stop_server a
img_check "$T/a.qcow2"

# Read-only export.
qemu-io -f qcow2 -c "write -P 0x33 0 64K" "$T/a.qcow2" >/dev/null || fail "qemu-io write"
cp "$T/a.qcow2" "$T/a.orig"
start_server ro -r -t -e 0 "$T/a.qcow2"
py errors.py "$(uri ro)" ro
stop_server ro
cmp "$T/a.qcow2" "$T/a.orig" || fail "the read-only export changed the image"

# BLOCK_STATUS with length 0: an error or a valid chunk (at least one descriptor).
start_server z -t -e 0 "$T/a.qcow2"
py errors.py "$(uri z)" zerolen
finish
