#!/bin/bash
# Handshake: nbdinfo --list/--json/plain output (name, description, size, block sizes, can_*
# flags, contexts), GO with a wrong export name (server with -t keeps running), and through libnbd
# and a raw client: fixed newstyle with and without structured replies, old-style
# NBD_OPT_EXPORT_NAME, option mode (LIST, INFO, LIST/SET_META_CONTEXT), with and without -A;
# nbdinfo --json identical to qemu-nbd's for several option sets.
source "$(dirname "$0")/lib/common.bash"
need nbdinfo qemu-img
need_python_nbd

SIZE=$((64 << 20))
mkimg "$T/a.qcow2" 64M
start_server a -t -e 0 -x disk0 -D "Test disk" "$T/a.qcow2"
U=$(uri a disk0)

# --- nbdinfo --list: name and description.
out=$(run_t 30 nbdinfo --list "$(uri a)") || fail "nbdinfo --list failed: $out"
echo "$out"
grep -q 'export="disk0"' <<<"$out" || fail "nbdinfo --list does not show the export name"
grep -q 'description: Test disk' <<<"$out" || fail "nbdinfo --list does not show the description"

# --- nbdinfo plain output fields.
out=$(run_t 30 nbdinfo "$U") || fail "nbdinfo failed: $out"
for want in "newstyle-fixed" "structured" "export-size: $SIZE" "block_size_minimum: 1" \
    "block_size_preferred: 4096" "block_size_maximum: 33554432" "can_flush: true" "can_fua: true" \
    "can_trim: true" "can_zero: true" "can_fast_zero: true" "can_cache: true" "can_df: true" \
    "can_multi_conn: true" "is_read_only: false" "base:allocation"; do
    grep -qF "$want" <<<"$out" || fail "nbdinfo output lacks '$want'"
done
grep -q "qemu:allocation-depth" <<<"$out" && fail "qemu:allocation-depth offered without -A"

# --- nbdinfo --json, parsed.
run_t 30 nbdinfo --json "$U" >"$T/info.json" || fail "nbdinfo --json failed"
"$PYTHON" - "$T/info.json" "$SIZE" <<'EOF' || fail "nbdinfo --json content"
import json, sys
j = json.load(open(sys.argv[1]))
e = j["exports"][0]
want = {"export-name": "disk0", "description": "Test disk", "export-size": int(sys.argv[2]),
        "block_size_minimum": 1, "block_size_preferred": 4096, "block_size_maximum": 32 << 20,
        "is_read_only": False, "can_flush": True, "can_fua": True, "can_trim": True, "can_zero": True,
        "can_fast_zero": True, "can_cache": True, "can_df": True, "can_multi_conn": True}
bad = {k: (e.get(k), v) for k, v in want.items() if e.get(k) != v}
assert j["protocol"] == "newstyle-fixed" and j["structured"] is True, j
assert e["contexts"] == ["base:allocation"], e["contexts"]
assert not bad, bad
print("  nbdinfo --json ok")
EOF

# --- NBD_OPT_GO with a wrong export name fails cleanly; the server keeps serving.
out=$(run_t 30 nbdinfo "$(uri a nosuchexport)" 2>&1) && fail "nbdinfo with a wrong export name succeeded"
echo "$out"
grep -qi "nosuchexport\|no such\|unknown" <<<"$out" || fail "unclear error for a wrong export name: $out"
check_alive a "after a wrong export name"
run_t 30 nbdinfo --size "$U" | grep -qx "$SIZE" || fail "server does not serve after a wrong export name"

# --- Protocol details through libnbd and a raw client.
py handshake.py "$(uri a)" disk0 "Test disk" "$SIZE" 0
check_alive a "after the handshake tests"
grep -q "unknown export 'no-such-export'" "${SRV_LOG[a]}" || fail "no log line for EXPORT_NAME with an unknown name"

# --- Same with -A, and a read-only export: flags differ accordingly.
mkimg "$T/b.qcow2" 64M
start_server b -t -A -e 0 -x disk0 -D "Test disk" "$T/b.qcow2"
py handshake.py "$(uri b)" disk0 "Test disk" "$SIZE" 1
out=$(run_t 30 nbdinfo "$(uri b disk0)") || fail "nbdinfo -A failed"
grep -q "qemu:allocation-depth" <<<"$out" || fail "qemu:allocation-depth not offered with -A"

mkimg "$T/c.qcow2" 64M
start_server ro -t -r -e 2 "$T/c.qcow2"
out=$(run_t 30 nbdinfo "$(uri ro)") || fail "nbdinfo on a read-only export failed"
for want in "is_read_only: true" "can_trim: false" "can_zero: false" "can_multi_conn: true" \
    "can_flush: true"; do
    grep -qF "$want" <<<"$out" || fail "read-only export: nbdinfo lacks '$want'"
done
# Differential: nbdinfo --json of qnbd and of qemu-nbd with the same options must agree on
# every field (flags, block sizes, contexts, size, name, description) but the URI.
if command -v qemu-nbd >/dev/null; then
    qemu-img create -q -f qcow2 "$T/ref.qcow2" 64M || fail "qemu-img create"
    mkimg "$T/d.qcow2" 64M
    i=0
    for args in "" "-r" "-r -e 2" "-e 2" "-e 0 -A" "-A -r" "--discard=unmap -e 3"; do
        i=$((i + 1))
        qport=$(free_port)
        # shellcheck disable=SC2086
        qemu-nbd -t $args -p "$qport" "$T/ref.qcow2" >"$T/qemu-nbd$i.log" 2>&1 &
        qpid=$!
        track_pid "$qpid"
        for ((j = 0; j < 100; j++)); do
            nbdinfo --size "nbd://127.0.0.1:$qport/" >/dev/null 2>&1 && break
            sleep 0.1
        done
        # shellcheck disable=SC2086
        start_server d$i -t $args "$T/d.qcow2"
        run_t 30 nbdinfo --json "nbd://127.0.0.1:$qport/" >"$T/q.json" || fail "nbdinfo on qemu-nbd $args"
        run_t 30 nbdinfo --json "$(uri d$i)" >"$T/n.json" || fail "nbdinfo on qnbd $args"
        "$PYTHON" - "$T/q.json" "$T/n.json" "$args" <<'EOF2' || fail "qnbd and qemu-nbd differ with options '$args'"
import json, sys
q, n = (json.load(open(p)) for p in sys.argv[1:3])
def norm(j):
    e = dict(j["exports"][0])
    for k in ("uri", "content"):
        e.pop(k, None)
    return {**{k: v for k, v in j.items() if k != "exports"}, **e}
q, n = norm(q), norm(n)
diff = {k: (q.get(k), n.get(k)) for k in sorted(set(q) | set(n)) if q.get(k) != n.get(k)}
if diff:
    print(f"  options '{sys.argv[3]}': qemu-nbd vs qnbd: {diff}")
    sys.exit(1)
print(f"  options '{sys.argv[3]}': nbdinfo --json identical to qemu-nbd")
EOF2
        kill -TERM "$qpid"
        wait "$qpid" 2>/dev/null
        stop_server d$i
    done
fi

# -e 1 (the default): no CAN_MULTI_CONN; the export name defaults to "".
stop_server a
start_server one -t "$T/a.qcow2"
out=$(run_t 30 nbdinfo --json "$(uri one)") || fail "nbdinfo on the default export failed"
grep -q '"export-name": ""' <<<"$out" || fail "default export name is not empty"
grep -q '"can_multi_conn": false' <<<"$out" || fail "CAN_MULTI_CONN advertised with -e 1"
stop_server one
img_check "$T/a.qcow2"
finish
