#!/bin/bash
# Every command and flag through libnbd (py/commands.py): READ simple/structured/DF, WRITE(+FUA),
# FLUSH, TRIM(+FUA), WRITE_ZEROES(+NO_HOLE, +FAST_ZERO), CACHE, BLOCK_STATUS(+REQ_ONE), DISC.
# Then the image itself, after the server exits: with --discard=unmap the trimmed clusters are
# freed (qemu-img map), with --discard=ignore nothing changes; --detect-zeroes=unmap frees
# clusters written with zeros; every image passes qemu-img check.
source "$(dirname "$0")/lib/common.bash"
need qemu-img
need_python_nbd

M=$((1 << 20))

# map_has IMAGE START LENGTH KEY VALUE: every qemu-img map entry overlapping the range has
# KEY == VALUE (KEY "offset" means: host cluster allocated, VALUE true/false).
map_has() {
    qemu-img map --output=json -f qcow2 "$1" >"$T/map.json" || fail "qemu-img map $1"
    "$PYTHON" - "$T/map.json" "$2" "$3" "$4" "$5" <<'PY' || { cat "$T/map.json" >&2; fail "map of $1 [$2,+$3): $4 != $5"; }
import json, sys
m = json.load(open(sys.argv[1]))
start, length, key, want = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "true"
hit = [e for e in m if e["start"] < start + length and e["start"] + e["length"] > start]
assert hit, "no map entries"
for e in hit:
    got = ("offset" in e) if key == "offset" else e[key]
    assert got == want, e
PY
}

# --discard=unmap
mkimg "$T/unmap.qcow2" 64M
start_server unmap -t -e 0 --discard=unmap "$T/unmap.qcow2"
py commands.py "$(uri unmap)" unmap
check_alive unmap "after the command tests"
grep -q "disconnected" "${SRV_LOG[unmap]}" || fail "no log line for the client's disconnect"
stop_server unmap
img_check "$T/unmap.qcow2"
map_has "$T/unmap.qcow2" 0 $((2 * M)) data true
map_has "$T/unmap.qcow2" $((2 * M)) $M offset false          # TRIM freed the clusters
map_has "$T/unmap.qcow2" $((3 * M)) $M offset false          # WRITE_ZEROES may punch
map_has "$T/unmap.qcow2" $((3 * M)) $((2 * M)) zero true
map_has "$T/unmap.qcow2" $((8 * M)) $((8 * M)) offset false  # never written

# --discard=ignore (the default)
mkimg "$T/ignore.qcow2" 64M
start_server ignore -t -e 0 "$T/ignore.qcow2"
py commands.py "$(uri ignore)" ignore
stop_server ignore
img_check "$T/ignore.qcow2"
map_has "$T/ignore.qcow2" $((2 * M)) $M data true            # TRIM ignored: data stays
map_has "$T/ignore.qcow2" $((4 * M)) $M zero true            # NO_HOLE zeroes
map_has "$T/ignore.qcow2" 0 $((2 * M)) data true

# --detect-zeroes: writes of zeros become zero writes.
for mode in unmap on; do
    mkimg "$T/dz-$mode.qcow2" 64M
    start_server dz-$mode -t -e 0 --detect-zeroes=$mode --discard=unmap "$T/dz-$mode.qcow2"
    "$PYTHON" - "$(uri dz-$mode)" <<'PY' || fail "--detect-zeroes=$mode writes"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
M = 1 << 20
h.pwrite(b"\x5a" * (2 * M), 0)
h.pwrite(bytes(M), 0)                 # zeros over data
h.pwrite(bytes(M), 4 * M)             # zeros over nothing
h.pwrite(bytes(M), 6 * M, nbd.CMD_FLAG_FUA)
assert h.pread(2 * M, 0) == bytes(M) + b"\x5a" * M
assert h.pread(M, 4 * M) == bytes(M)
h.shutdown()
PY
    stop_server dz-$mode
    img_check "$T/dz-$mode.qcow2"
    map_has "$T/dz-$mode.qcow2" 0 $M zero true
    map_has "$T/dz-$mode.qcow2" $M $M data true
    map_has "$T/dz-$mode.qcow2" $((4 * M)) $M offset false   # zeros over nothing allocate nothing
    [[ $mode == unmap ]] && map_has "$T/dz-$mode.qcow2" 0 $M offset false
done

# Raw files: TRIM and WRITE_ZEROES punch holes with --discard=unmap, NO_HOLE keeps blocks;
# block status agrees with qemu-img map of the file.
head -c $((8 * M)) /dev/urandom >"$T/r.raw"
blocks_before=$(stat -c %b "$T/r.raw")
start_server raw -t -f raw -e 0 --discard=unmap "$T/r.raw"
"$PYTHON" - "$(uri raw)" <<'PY' || fail "raw file with --discard=unmap"
import sys, nbd
M = 1 << 20
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.trim(2 * M, M)
h.zero(M, 4 * M)
h.zero(M, 6 * M, nbd.CMD_FLAG_NO_HOLE)
h.flush()
for off in (M, 4 * M, 6 * M):
    assert h.pread(M, off) == bytes(M), off
h.shutdown()
PY
stop_server raw
blocks_after=$(stat -c %b "$T/r.raw")
((blocks_after <= blocks_before - 5 * M / 2 / 512)) || fail "raw: TRIM/WRITE_ZEROES freed nothing ($blocks_before -> $blocks_after blocks)"
[[ $(stat -c %s "$T/r.raw") == $((8 * M)) ]] || fail "raw: file size changed"
start_server rawbs -t -r -e 0 -f raw "$T/r.raw"
py block_status.py "$(uri rawbs)" "$T/r.raw" 0 raw
stop_server rawbs

# Cache and AIO modes are accepted and serve data correctly.
i=0
for opts in "--cache=none" "--cache=writethrough" "--cache=directsync" "--cache=unsafe" "-n" \
    "--aio=threads" "--aio=native" "--aio=io_uring"; do
    i=$((i + 1))
    mkimg "$T/mode.qcow2" 64M
    # shellcheck disable=SC2086
    start_server mode$i -t $opts "$T/mode.qcow2"
    "$PYTHON" - "$(uri mode$i)" <<'PY' || fail "serving with $opts"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
d = bytes(range(256)) * 4096
h.pwrite(d, 12345)
h.flush()
h.pwrite(d, 5 << 20, nbd.CMD_FLAG_FUA)
assert h.pread(len(d), 12345) == d and h.pread(len(d), 5 << 20) == d
h.shutdown()
PY
    stop_server mode$i
    img_check "$T/mode.qcow2"
    out=$(qemu-io -f qcow2 -r -c "read -P 0 0 12345" -c "read -P 0x7f 5243007 1" "$T/mode.qcow2" 2>&1)
    grep -q "Pattern verification failed\|error" <<<"$out" && fail "data after $opts: $out"
done
finish
