#!/bin/bash
# --control PATH: the JSON control socket (owner-only, mode 0600). block-export-add serves a new
# image under its name at once (LIST shows it, it reads and writes); query-block-exports lists
# the exports with their connections; query-stats counts flushes; block-export-del refuses
# new connections to it, shuts down its connections after the timeout, writes the image back
# and unlocks it (qemu-img check clean, another process may open it); bad requests (not JSON,
# unknown command or argument, missing name, an image that does not open, a name in use, a
# name that does not exist) get an error and change nothing. socat is the client, as
# documented in the manual.
source "$(dirname "$0")/lib/common.bash"
need nbdinfo
need socat
need_python_nbd

C=$T/control.sock
ctl() { printf '%s\n' "$1" | run_t 60 socat -t 60 - "UNIX-CONNECT:$C"; }
# ctl_ok JSON: the reply must be a "return".
ctl_ok() {
    local out
    out=$(ctl "$1") || fail "control request failed: $1"
    grep -q '^{"return"' <<<"$out" || fail "control request $1 got: $out"
    printf '%s\n' "$out"
}
# ctl_err JSON MESSAGE: the reply must be an error saying MESSAGE.
ctl_err() {
    local out
    out=$(ctl "$1") || fail "control request failed: $1"
    grep -q '^{"error":{"class":"GenericError","desc":".*'"$2" <<<"$out" ||
        fail "control request $1: expected an error with '$2', got: $out"
}

mkimg "$T/a.qcow2" 64M
mkimg "$T/b.qcow2" 32M
start_server s -t -e 0 -x first --control "$C" "$T/a.qcow2"
PORT=${SRV_PORT[s]}
check "the control socket is owner-only" test "$(stat -c %a "$C")" = 600

ctl_err 'not json' "not a JSON object"
ctl_err '{"execute":"quit"}' "unknown command 'quit'"
ctl_err '{"execute":"block-export-add","arguments":{"name":"x"}}' "argument 'file' is required"
ctl_err '{"execute":"block-export-add","arguments":{"name":"x","file":"'"$T"'/b.qcow2","node":1}}' \
    "unknown argument 'node'"
ctl_err '{"execute":"block-export-add","arguments":{"name":"first","file":"'"$T"'/b.qcow2"}}' \
    "an export named 'first' exists"
ctl_err '{"execute":"block-export-add","arguments":{"name":"x","file":"'"$T"'/missing.qcow2"}}' \
    "missing.qcow2"
ctl_err '{"execute":"block-export-del","arguments":{"name":"nope"}}' "no export named 'nope'"
mkimg "$T/c.qcow2" 16M
qemu-img bitmap --add "$T/c.qcow2" b0 || fail "qemu-img bitmap --add"
ctl_err '{"execute":"block-export-add","arguments":{"name":"x","file":"'"$T"'/c.qcow2","bitmaps":"b0"}}' \
    "argument 'bitmaps' must be an array of strings"
ctl_err '{"execute":"block-export-add","arguments":{"name":"x","file":"'"$T"'/c.qcow2","bitmaps":["nope"]}}' \
    "Bitmap 'nope' is not found"
ctl_ok '{"execute":"block-export-add","arguments":{"name":"bm","file":"'"$T"'/c.qcow2","bitmaps":["b0"]}}' >/dev/null
run_t 60 qemu-io -f raw "nbd://127.0.0.1:$PORT/bm" -c "write 1M 64k" >/dev/null || fail "write to bm"
out=$(run_t 30 nbdinfo --map=qemu:dirty-bitmap:b0 "nbd://127.0.0.1:$PORT/bm") || fail "nbdinfo --map"
grep -qE '^ *1048576 +65536 +1 +dirty' <<<"$out" || fail "bitmap b0 through the added export: $out"
out=$(ctl_ok '{"execute":"query-block-exports"}')
grep -q '"name":"bm",.*"bitmaps":\["b0"\]' <<<"$out" || fail "query-block-exports lacks bm's bitmap: $out"
ctl_ok '{"execute":"block-export-del","arguments":{"name":"bm"}}' >/dev/null
img_check "$T/c.qcow2"
out=$(ctl_ok '{"execute":"query-block-exports"}')
grep -q '"name":"first"' <<<"$out" && ! grep -q '"name":"x"' <<<"$out" ||
    fail "the failed requests changed the exports: $out"

ctl_ok '{"execute":"block-export-add","arguments":{"name":"second","file":"'"$T"'/b.qcow2","description":"added"}}' >/dev/null
out=$(run_t 30 nbdinfo --list "nbd://127.0.0.1:$PORT/") || fail "nbdinfo --list"
grep -qx 'export="second":' <<<"$out" || fail "LIST lacks the added export: $out"
run_t 60 qemu-io -f raw "nbd://127.0.0.1:$PORT/second" -c "write -P 0x44 0 2M" -c flush \
    >/dev/null || fail "write to the added export"

# A client holding the export open while it is removed: after the timeout it is shut down.
"$PYTHON" - "nbd://127.0.0.1:$PORT/second" >"$T/holder.log" 2>&1 <<'EOF' &
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.pread(4096, 0) == b"\x44" * 4096
print("connected", flush=True)
try:
    for _ in range(300):
        h.pread(4096, 0)
        time.sleep(0.05)
    print("still connected", flush=True)
except nbd.Error as e:
    print("closed:", e, flush=True)
EOF
holder=$!
for _ in $(seq 100); do grep -q connected "$T/holder.log" && break; sleep 0.1; done
out=$(ctl_ok '{"execute":"query-block-exports"}')
grep -q '"name":"second","file":"'"$T"'/b.qcow2","description":"added","read-only":false,"bitmaps":\[\],"size":33554432,"connections":1' <<<"$out" ||
    fail "query-block-exports: $out"
out=$(ctl_ok '{"execute":"query-stats"}')
grep -q '"name":"second","flush-requests":[1-9]' <<<"$out" || fail "query-stats: $out"
start=$SECONDS
ctl_ok '{"execute":"block-export-del","arguments":{"name":"second","timeout":1}}' >/dev/null
check "del waited for the timeout" test $((SECONDS - start)) -ge 1
wait "$holder"
grep -q "closed:" "$T/holder.log" || fail "the client of the removed export: $(cat "$T/holder.log")"
run_t 30 nbdinfo --size "nbd://127.0.0.1:$PORT/second" >/dev/null 2>&1 &&
    fail "the removed export still answers"
img_check "$T/b.qcow2"
qemu-io -f qcow2 -c "read -P 0x44 0 2M" "$T/b.qcow2" | grep -q "read 2097152" ||
    fail "the removed export's data is not in b.qcow2 (or it is still locked)"
grep -q "export 'second' removed" "${SRV_LOG[s]}" || fail "no log line for the removal"
# The first export kept serving throughout.
check "first still serves" test "$(run_t 30 nbdinfo --size "nbd://127.0.0.1:$PORT/first")" = 67108864
stop_server s
check "the control socket is gone after exit" test ! -e "$C"
img_check "$T/a.qcow2"
refused_out=$(run_t 10 "$QNBD" -c /dev/nbd0 --control "$C" "$T/a.qcow2" 2>&1) &&
    fail "--control with -c was accepted"
grep -q "cannot be used with -c" <<<"$refused_out" || fail "--control with -c: $refused_out"
finish
