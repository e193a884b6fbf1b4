#!/bin/bash
# Persistent dirty bitmaps against qemu, both ways. The same writes, zero writes and discards go
# to one copy through qnbd (qemu-io over NBD) and to another through qemu-io on the file; then
# every bitmap (enabled at 64 KiB, 1 MiB and 4 KiB granularity, and a disabled one) reads the
# same in qemu-img info and through qemu-nbd -B and nbdinfo --map, both images are qemu-img
# check clean and their data equal. While qnbd serves, the enabled bitmaps are in use on disk
# and qnbd's qemu:dirty-bitmap:NAME already equals qemu's for the same writes. qnbd exports
# bitmaps qemu kept exactly as qemu-nbd -B does (-B and --export bitmap=), lists the same
# contexts, and refuses a missing bitmap and one left in use by a kill -9, as qemu-nbd does;
# the image itself reopens writable after that crash and is clean after its next close.
source "$(dirname "$0")/lib/common.bash"
need nbdinfo qemu-img qemu-io qemu-nbd python3

WRITES=(-c "write -P 0x41 1M 64k" -c "write -z 8M 128k" -c "discard 16M 64k"
    -c "write -P 0x42 33000 1000" -c "write -P 0x43 63M 1M" -c "write -z -u 40M 2M")
BITMAPS=(b0 b1 b2 b3)

# qemu_map IMG BITMAP: the bitmap as qemu-nbd -r -B exports it, through nbdinfo --map.
qemu_map() {
    local img=$1 b=$2 port pid j out
    port=$(free_port)
    qemu-nbd -r -t -f qcow2 -p "$port" -B "$b" "$img" >"$T/qemu-nbd.log" 2>&1 &
    pid=$!
    track_pid "$pid"
    for ((j = 0; j < 100; j++)); do
        nbdinfo --size "nbd://127.0.0.1:$port/" >/dev/null 2>&1 && break
        sleep 0.1
    done
    out=$(run_t 30 nbdinfo --map="qemu:dirty-bitmap:$b" "nbd://127.0.0.1:$port/") ||
        { cat "$T/qemu-nbd.log" >&2; fail "qemu-nbd -B $b $img: nbdinfo --map failed"; }
    kill "$pid"
    wait "$pid" 2>/dev/null
    echo "$out"
}

# qnbd_map SERVER BITMAP [EXPORT]: the bitmap as qnbd exports it.
qnbd_map() {
    run_t 30 nbdinfo --map="qemu:dirty-bitmap:$2" "$(uri "$1" "${3:-}")" ||
        fail "qnbd: nbdinfo --map=qemu:dirty-bitmap:$2 failed"
}

# same_map WHAT GOT WANT
same_map() {
    [[ $2 == "$3" ]] || { printf 'got:\n%s\nwant:\n%s\n' "$2" "$3" >&2; fail "$1 differs"; }
    say "ok: $1 ($(wc -l <<<"$2") runs)"
}

# bitmaps_json IMG: qemu-img info's bitmaps (name, granularity, flags), one per line.
bitmaps_json() {
    qemu-img info -U --output=json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for b in d["format-specific"]["data"].get("bitmaps", []):
    print(b["name"], b["granularity"], ",".join(b["flags"]))'
}

# flags IMG BITMAP
flags() { bitmaps_json "$1" | awk -v n="$2" '$1 == n {print $3}'; }

qemu-img create -q -f qcow2 "$T/a.qcow2" 64M || fail "qemu-img create"
qemu-img bitmap --add "$T/a.qcow2" b0 || fail "bitmap --add b0"
qemu-img bitmap --add --disable "$T/a.qcow2" b1 || fail "bitmap --add b1"
qemu-img bitmap --add -g 1M "$T/a.qcow2" b2 || fail "bitmap --add b2"
qemu-img bitmap --add -g 4K "$T/a.qcow2" b3 || fail "bitmap --add b3"
cp "$T/a.qcow2" "$T/ref.qcow2"
run_t 60 qemu-io -f qcow2 "${WRITES[@]}" "$T/ref.qcow2" >/dev/null || fail "qemu-io on ref"

# qnbd keeps the bitmaps for the same writes.
start_server s -t --discard unmap -B b0 -B b3 "$T/a.qcow2"
check "b0 in use while served" test "$(flags "$T/a.qcow2" b0)" = "in-use,auto"
check "b1 (disabled) left alone" test "$(flags "$T/a.qcow2" b1)" = ""
run_t 60 qemu-io -f raw "${WRITES[@]}" "$(uri s)" >/dev/null || fail "qemu-io through qnbd"
same_map "b0 live through qnbd vs qemu" "$(qnbd_map s b0)" "$(qemu_map "$T/ref.qcow2" b0)"
same_map "b3 live through qnbd vs qemu" "$(qnbd_map s b3)" "$(qemu_map "$T/ref.qcow2" b3)"
stop_server s
img_check "$T/a.qcow2"
img_check "$T/ref.qcow2"
qemu-img compare -q "$T/a.qcow2" "$T/ref.qcow2" || fail "data differs from qemu's copy"
same_map "qemu-img info bitmaps" "$(bitmaps_json "$T/a.qcow2")" "$(bitmaps_json "$T/ref.qcow2")"
for b in "${BITMAPS[@]}"; do
    same_map "$b stored by qnbd, read by qemu-nbd" "$(qemu_map "$T/a.qcow2" "$b")" \
        "$(qemu_map "$T/ref.qcow2" "$b")"
done

# qnbd exports bitmaps qemu kept, as qemu-nbd does.
start_server r -r -t -A -B b0 -B b1 -B b2 -B b3 "$T/ref.qcow2"
for b in "${BITMAPS[@]}"; do
    same_map "$b kept by qemu, exported by qnbd" "$(qnbd_map r "$b")" \
        "$(qemu_map "$T/ref.qcow2" "$b")"
done
contexts() { run_t 30 nbdinfo "$1" | awk '/contexts:/ {on = 1; next} on && /^\t\t/ {print $1; next} {on = 0}' | sort; }
qport=$(free_port)
qemu-nbd -r -t -A -B b0 -B b1 -B b2 -B b3 -f qcow2 -p "$qport" "$T/ref.qcow2" >"$T/qemu-nbd-list.log" 2>&1 &
qpid=$!
track_pid "$qpid"
for ((j = 0; j < 100; j++)); do nbdinfo --size "nbd://127.0.0.1:$qport/" >/dev/null 2>&1 && break; sleep 0.1; done
same_map "contexts listed" "$(contexts "$(uri r)")" "$(contexts "nbd://127.0.0.1:$qport/")"
kill "$qpid"
wait "$qpid" 2>/dev/null
stop_server r

start_server e -t --export "name=x,file=$T/ref.qcow2,read-only=on,bitmap=b2"
same_map "--export bitmap=b2" "$(qnbd_map e b2 x)" "$(qemu_map "$T/ref.qcow2" b2)"
stop_server e

# Refusals, as qemu-nbd's.
refused_start "Bitmap 'nope' is not found" -r -B nope "$T/ref.qcow2"
cp "$T/a.qcow2" "$T/k.qcow2"
start_server k -t "$T/k.qcow2"
run_t 60 qemu-io -f raw -c "write -P 0x44 20M 64k" -c flush "$(uri k)" >/dev/null || fail "qemu-io k"
kill -9 "${SRV_PID[k]}"
wait "${SRV_PID[k]}" 2>/dev/null
SRV_RC[k]=killed
check "b0 in use after kill -9" test "$(flags "$T/k.qcow2" b0)" = "in-use,auto"
refused_start "Bitmap 'b0' is inconsistent and cannot be used" -r -B b0 "$T/k.qcow2"
if qemu-nbd -r -B b0 -f qcow2 -p "$(free_port)" "$T/k.qcow2" >"$T/qemu-nbd-k.log" 2>&1; then
    fail "qemu-nbd exported the inconsistent bitmap: the test's premise is wrong"
fi
grep -q "inconsistent" "$T/qemu-nbd-k.log" || fail "qemu-nbd: $(cat "$T/qemu-nbd-k.log")"
start_server k2 -t "$T/k.qcow2"
run_t 60 qemu-io -f raw -c "write -P 0x45 24M 64k" "$(uri k2)" >/dev/null || fail "qemu-io k2"
stop_server k2
img_check "$T/k.qcow2"
check "b0 still in use" test "$(flags "$T/k.qcow2" b0)" = "in-use,auto"
check "b1 still consistent" test "$(flags "$T/k.qcow2" b1)" = ""
run_t 30 qemu-io -f qcow2 -r -c "read -P 0x44 20M 64k" -c "read -P 0x45 24M 64k" "$T/k.qcow2" \
    >/dev/null || fail "data written around the crash is not there"
finish
