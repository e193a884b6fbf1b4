#!/bin/bash
# Several exports in one process (--export name=,file=,format=,read-only=,description=,
# allocation-depth=): LIST shows each with its description; each export reads and writes its
# own image (qemu-io by export name); a read-only export refuses writes; each image has its own
# lock (a second server on one of them is refused); the allocation-depth context is offered
# only where asked; after SIGTERM every image is closed clean. Over TLS, LIST shows them too.
# Bad --export values are refused at start, with a message naming the problem.
source "$(dirname "$0")/lib/common.bash"
source "$(dirname "$0")/lib/tls.bash"
need nbdinfo

mkimg "$T/a.qcow2" 64M
mkimg "$T/b.qcow2" 32M
truncate -s 16M "$T/c.raw"
A="name=alpha,file=$T/a.qcow2,description=first,,disk"  # a doubled comma is a comma
B="name=beta,file=$T/b.qcow2,read-only=on,allocation-depth=on"
C="name=gamma,file=$T/c.raw,format=raw"

refused_start "not both" --export "$A" "$T/b.qcow2"
refused_start "-x and -D name a single export" --export "$A" -x other
refused_start "is used twice" --export "$A" --export "name=alpha,file=$T/b.qcow2"
refused_start "file= is required" --export "name=x"
refused_start "name= is required" --export "file=$T/a.qcow2"
refused_start "property 'node-name' is not supported" --export "$A,node-name=n"
refused_start "Bitmap 'b0' is not found" --export "$A,bitmap=b0"
refused_start "format must be qcow2 or raw" --export "name=x,file=$T/c.raw,format=vmdk"
refused_start "not with --export" -c /dev/nbd0 --export "$A"
# A file that is not qcow2 without format=raw: refused, and the other images are left closed.
refused_start "" --export "$A" --export "name=bad,file=$T/c.raw"

start_server s -t -e 0 --export "$A" --export "$B" --export "$C" --discard unmap
PORT=${SRV_PORT[s]}
out=$(run_t 30 nbdinfo --list "nbd://127.0.0.1:$PORT/") || fail "nbdinfo --list"
for n in alpha beta gamma; do grep -qx "export=\"$n\":" <<<"$out" || fail "LIST lacks $n: $out"; done
grep -q "description: first,disk" <<<"$out" || fail "LIST lacks alpha's description: $out"
check "alpha size" test "$(run_t 30 nbdinfo --size "nbd://127.0.0.1:$PORT/alpha")" = 67108864
check "beta size" test "$(run_t 30 nbdinfo --size "nbd://127.0.0.1:$PORT/beta")" = 33554432
check "gamma size" test "$(run_t 30 nbdinfo --size "nbd://127.0.0.1:$PORT/gamma")" = 16777216

qio() {  # qio [-r] EXPORT QEMU-IO-COMMAND...: qemu-io on one export
    local args=()
    [[ $1 == -r ]] && { args+=(-r); shift; }
    local e=$1 c
    shift
    for c in "$@"; do args+=(-c "$c"); done
    run_t 60 qemu-io -f raw "nbd://127.0.0.1:$PORT/$e" "${args[@]}"
}
qio alpha "write -P 0x11 0 1M" "flush" >/dev/null || fail "write to alpha"
qio gamma "write -P 0x33 4M 1M" "flush" >/dev/null || fail "write to gamma"
qio alpha "read -P 0x11 0 1M" | grep -q "read 1048576" || fail "alpha does not read its data"
qio gamma "read -P 0x33 4M 1M" | grep -q "read 1048576" || fail "gamma does not read its data"
qio -r beta "read -P 0 0 1M" | grep -q "read 1048576" || fail "beta changed"
out=$(qio beta "write -P 0x22 0 64k" 2>&1)
grep -qi "permission\|read-only\|EPERM" <<<"$out" || fail "a write to read-only beta: $out"
out=$(run_t 30 nbdinfo --map=qemu:allocation-depth "nbd://127.0.0.1:$PORT/beta" 2>&1) ||
    fail "beta does not offer qemu:allocation-depth: $out"
run_t 30 nbdinfo --map=qemu:allocation-depth "nbd://127.0.0.1:$PORT/alpha" >/dev/null 2>&1 &&
    fail "alpha offers qemu:allocation-depth without allocation-depth=on"

# Each image is locked by this server: another one on b.qcow2 is refused.
run_t 20 "$QNBD" -p "$(free_port)" "$T/b.qcow2" >"$T/second.log" 2>&1 &&
    fail "a second server opened b.qcow2"
grep -qi "lock" "$T/second.log" || fail "the second server did not say the image is locked: $(cat "$T/second.log")"
stop_server s
img_check "$T/a.qcow2"
img_check "$T/b.qcow2"
qemu-io -f qcow2 -r -c "read -P 0x11 0 1M" "$T/a.qcow2" | grep -q "read 1048576" ||
    fail "alpha's data is not in a.qcow2"
qemu-io -f raw -r -c "read -P 0x33 4M 1M" "$T/c.raw" | grep -q "read 1048576" ||
    fail "gamma's data is not in c.raw"

# Over TLS, LIST (after STARTTLS) shows every export.
if command -v certtool >/dev/null; then
    make_pki "$T/pki"
    start_server t -t -e 0 --object "tls-creds-x509,id=t0,endpoint=server,dir=$T/pki/server" \
        --tls-creds t0 --export "$A" --export "$C"
    out=$(run_t 30 nbdinfo --list "nbds://127.0.0.1:${SRV_PORT[t]}/?tls-certificates=$T/pki/client") ||
        fail "nbdinfo --list over TLS"
    grep -qx 'export="alpha":' <<<"$out" && grep -qx 'export="gamma":' <<<"$out" ||
        fail "LIST over TLS: $out"
    stop_server t
fi
finish
