#!/bin/bash
# Images: `qnbd create` with each option family gives images qemu-img check accepts and qemu-img
# info describes as asked, which qnbd then serves (data verified with qemu-img compare); bad
# create options are refused. Damaged images (unaligned L1/refcount table offsets, bad
# cluster_bits, version, L1 size, unknown incompatible feature, truncation, missing backing file,
# bad magic) are refused with a one-line error and a nonzero exit, and are byte-identical after.
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io
need_python_nbd

cd "$T" || fail "cd"

# info_is IMAGE PYTHON-EXPR: the expression holds for j = qemu-img info --output=json.
info_is() {
    qemu-img info --output=json "$1" >"$T/info.json" || fail "qemu-img info $1"
    "$PYTHON" -c "import json,sys; j=json.load(open('$T/info.json')); f=j.get('format-specific',{}).get('data',{}); sys.exit(0 if ($2) else 1)" ||
        { cat "$T/info.json" >&2; fail "qemu-img info $1: not ($2)"; }
}

# serve_and_verify IMAGE: serve it, write a pattern with qemu-io over NBD, compare with qemu-img.
n=0
serve_and_verify() {
    local img=$1 out
    n=$((n + 1))
    start_server v$n -t -e 0 "$img"
    out=$(qemu-io -f raw -c "write -P 0x5c 65000 300000" -c "write -z 1M 64K" -c "read -P 0x5c 65000 300000" \
        "$(uri v$n)" 2>&1)
    grep -qiE "fail|error" <<<"$out" && fail "qemu-io over NBD on $img: $out"
    stop_server v$n
    img_check "$img"
    out=$(qemu-io -f qcow2 -r -c "read -P 0x5c 65000 300000" -c "read -P 0 1M 64K" "$img" 2>&1)
    grep -qiE "fail|error" <<<"$out" && fail "data in $img after serving: $out"
    return 0
}

"$QNBD" create def.qcow2 64M >"$T/out" || fail "qnbd create"
grep -q "Formatting 'def.qcow2'" "$T/out" || fail "qnbd create output: $(cat "$T/out")"
img_check def.qcow2
info_is def.qcow2 "j['virtual-size'] == 64 << 20 and j['cluster-size'] == 65536 and j['format'] == 'qcow2' and f['compat'] == '1.1' and f['refcount-bits'] == 16"
serve_and_verify def.qcow2

mkimg c4k.qcow2 64M -o cluster_size=4096
info_is c4k.qcow2 "j['cluster-size'] == 4096"
serve_and_verify c4k.qcow2
mkimg c2m.qcow2 64M -o cluster_size=2M
info_is c2m.qcow2 "j['cluster-size'] == 2 << 20"
serve_and_verify c2m.qcow2
mkimg lazy.qcow2 64M -o lazy_refcounts=on,refcount_bits=1
info_is lazy.qcow2 "f['lazy-refcounts'] is True and f['refcount-bits'] == 1"
serve_and_verify lazy.qcow2
mkimg r64.qcow2 64M -o refcount_bits=64
info_is r64.qcow2 "f['refcount-bits'] == 64"
mkimg v2.qcow2 64M -o compat=0.10
info_is v2.qcow2 "f['compat'] == '0.10'"
serve_and_verify v2.qcow2
mkimg l2x.qcow2 64M -o extended_l2=on,cluster_size=128k
info_is l2x.qcow2 "f.get('extended-l2') is True and j['cluster-size'] == 128 << 10"
serve_and_verify l2x.qcow2
mkimg zstd.qcow2 64M -o compression_type=zstd
info_is zstd.qcow2 "f.get('compression-type') == 'zstd'"
serve_and_verify zstd.qcow2
mkimg odd.qcow2 12345679
info_is odd.qcow2 "j['virtual-size'] == 12345856"   # rounded up to 512 bytes, as qemu-img does
img_check odd.qcow2
mkimg big.qcow2 1T
info_is big.qcow2 "j['virtual-size'] == 1 << 40"
img_check big.qcow2
# Backing files: qcow2 and raw.
qemu-io -f qcow2 -c "write -P 0x11 0 1M" def.qcow2 >/dev/null || fail "qemu-io"
"$QNBD" create -b def.qcow2 -F qcow2 over.qcow2 64M >/dev/null || fail "qnbd create -b qcow2"
info_is over.qcow2 "j['backing-filename'] == 'def.qcow2' and j.get('backing-filename-format') == 'qcow2'"
img_check over.qcow2
qemu-img create -q -f raw base.raw 32M || fail "qemu-img create raw"
"$QNBD" create -b base.raw -F raw overraw.qcow2 64M >/dev/null || fail "qnbd create -b raw"
info_is overraw.qcow2 "j['backing-filename'] == 'base.raw' and j.get('backing-filename-format') == 'raw'"
img_check overraw.qcow2
start_server ov -t -r "$T/over.qcow2"
out=$(qemu-img compare -f raw -F qcow2 "$(uri ov)" "$T/def.qcow2" 2>&1) || fail "over.qcow2 differs from its backing file: $out"
stop_server ov
# Bad create options.
for bad in "-o cluster_size=1000" "-o cluster_size=4M" "-o refcount_bits=3" "-o compat=2.0" \
    "-o bogus=1" "-o extended_l2=on,cluster_size=4k" "-o compression_type=lzma"; do
    # shellcheck disable=SC2086
    "$QNBD" create $bad bad.qcow2 64M >"$T/out" 2>"$T/err" && fail "qnbd create $bad succeeded"
    [[ -s $T/err ]] || fail "qnbd create $bad: no error message"
    say "ok: qnbd create $bad refused: $(head -n1 "$T/err")"
done
"$QNBD" create bad.qcow2 lots >/dev/null 2>&1 && fail "qnbd create with size 'lots' succeeded"

# ---- Damaged images.
qemu-img create -q -f qcow2 good.qcow2 64M || fail "qemu-img create"
qemu-io -f qcow2 -c "write -P 0x21 0 1M" -c "write -P 0x22 10M 64K" good.qcow2 >/dev/null || fail "qemu-io"

# poke FILE OFFSET FORMAT VALUE (python struct format, big-endian)
poke() {
    "$PYTHON" - "$@" <<'PY' || fail "poke $*"
import struct, sys
path, off, fmt, val = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(path, "r+b") as f:
    f.seek(off)
    if fmt == "add":
        f.seek(off); cur = struct.unpack(">Q", f.read(8))[0]; f.seek(off); f.write(struct.pack(">Q", cur + int(val)))
    else:
        f.write(struct.pack(">" + fmt, int(val, 0)))
PY
}

damaged() {
    local what=$1 pattern=$2; shift 2
    local img=$T/bad-$n.qcow2 rc lines
    n=$((n + 1))
    cp good.qcow2 "$img"
    "$@" "$img"
    cp "$img" "$img.copy"
    for ro in "" "-r"; do
        run_t 20 "$QNBD" $ro -p 1 "$img" >"$T/out" 2>"$T/err"; rc=$?
        ((rc != 0 && rc != 124 && rc != 137)) || { cat "$T/err" >&2; fail "$what ($ro): exit $rc, expected a quick refusal"; }
        check_log_clean "$T/err"
        lines=$(grep -c . "$T/err")
        ((lines == 1)) || { cat "$T/err" >&2; fail "$what ($ro): $lines lines on stderr, expected one"; }
        grep -qiE -- "$pattern" "$T/err" || { cat "$T/err" >&2; fail "$what ($ro): error does not match '$pattern'"; }
        cmp "$img" "$img.copy" || fail "$what ($ro): the image was modified"
    done
    say "ok: $what refused: $(cat "$T/err")"
}

l1_unaligned() { poke "$1" 40 add 1; }
rc_unaligned() { poke "$1" 48 add 4097; }
cbits_big() { poke "$1" 20 I 40; }
cbits_small() { poke "$1" 20 I 5; }
version_4() { poke "$1" 4 I 4; }
l1_huge() { poke "$1" 36 I 0x7fffffff; }
incompat() { poke "$1" 72 Q 0x8000; }
truncated() { truncate -s 100 "$1"; }
l1_past_eof() { poke "$1" 40 Q $((1 << 40)); }
bad_magic() { poke "$1" 0 I 0x51464a00; }
missing_backing() {
    qemu-img create -q -f qcow2 -b "$T/gone.qcow2" -F qcow2 -u "$1" 64M || fail "qemu-img create -u"
}
damaged "unaligned L1 table offset" "L1|align" l1_unaligned
damaged "unaligned refcount table offset" "refcount|align" rc_unaligned
damaged "cluster_bits 40" "cluster" cbits_big
damaged "cluster_bits 5" "cluster" cbits_small
damaged "version 4" "version" version_4
damaged "huge L1 size" "L1|size|large" l1_huge
damaged "unknown incompatible feature" "feature|incompatible" incompat
damaged "truncated header" "header|short|truncat|small|qcow2|raw" truncated
damaged "L1 table past the end of the file" "L1|end|file|beyond" l1_past_eof
damaged "bad magic (not qcow2)" "-f raw" bad_magic
damaged "missing backing file" "backing|gone" missing_backing
finish
