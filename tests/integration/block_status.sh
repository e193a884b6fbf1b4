#!/bin/bash
# BLOCK_STATUS against qemu-img map of the same image, for a three-level backing chain built with
# qemu-io (data, zero clusters over backing data, a backing file shorter than the overlay):
# base:allocation via libnbd, nbdinfo --map and qemu-img map over NBD; qemu:allocation-depth
# (with -A) via libnbd and nbdinfo --map=qemu:allocation-depth; REQ_ONE; without -A the depth
# context is not offered. Also compressed, extended-L2 (with an overlay) and version 2 images,
# and an image written through qnbd itself.
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io nbdinfo
need_python_nbd

qio() {
    local img=$1; shift
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    out=$(qemu-io -f qcow2 "${args[@]}" "$img" 2>&1) || fail "qemu-io on $img: $out"
    grep -qiE "error|failed" <<<"$out" && fail "qemu-io on $img: $out"
    return 0
}

cd "$T" || fail "cd $T"
qemu-img create -q -f qcow2 base.qcow2 48M || fail "qemu-img create base"
qio base.qcow2 "write -P 1 0 1M" "write -P 2 4M 512K" "write -z 6M 128K" "write -P 3 40M 64K" \
    "write -P 9 47M 1M"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 64M || fail "qemu-img create mid"
qio mid.qcow2 "write -P 4 512K 1M" "write -z 4M 64K" "write -P 5 50M 1M" "write -P 5 46M 64K"
# The top layer is made by qnbd create (with a backing file), then filled by qemu-io.
"$QNBD" create -b mid.qcow2 -F qcow2 top.qcow2 64M >/dev/null || fail "qnbd create -b"
qio top.qcow2 "write -P 6 0 64K" "write -P 7 10M 3M" "write -z -u 50M 128K" "write -P 8 63M 1M" \
    "write -z 40M 64K" "write -P 10 20000 5000"
img_check top.qcow2
cp top.qcow2 top.orig

start_server depth -t -r -A -e 0 "$T/top.qcow2"
py block_status.py "$(uri depth)" "$T/top.qcow2" 1
stop_server depth

start_server nodepth -t -r -e 0 "$T/top.qcow2"
py block_status.py "$(uri nodepth)" "$T/top.qcow2" 0
stop_server nodepth
cmp top.qcow2 top.orig || fail "a read-only export changed the image"

# Other layouts: a compressed image, extended L2 (subclusters: partial allocation, zero and
# unmapped subclusters) with an extended-L2 overlay, and a version 2 image.
head -c 4M /dev/urandom >r4m
qemu-img create -q -f raw src.raw 32M && dd if=r4m of=src.raw bs=1M seek=3 conv=notrunc status=none ||
    fail "making src.raw"
qemu-img convert -c -f raw -O qcow2 src.raw comp.qcow2 || fail "qemu-img convert -c"
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k l2x.qcow2 32M || fail "qemu-img create l2x"
qio l2x.qcow2 "write -P 1 4k 8k" "write -z 64k 32k" "write -P 2 1M 200k" "write -z -u 1100k 64k" \
    "write -P 3 5000000 7000"
qemu-img create -q -f qcow2 -b l2x.qcow2 -F qcow2 -o extended_l2=on,cluster_size=128k l2top.qcow2 32M ||
    fail "qemu-img create l2top"
qio l2top.qcow2 "write -P 4 1050k 20k" "write -z 4k 4k"
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 32M || fail "qemu-img create v2"
qio v2.qcow2 "write -P 1 0 1M" "write -z 512k 64k" "write -P 2 3M 100k"
for img in comp l2x l2top v2; do
    start_server "bs-$img" -t -r -A -e 0 "$T/$img.qcow2"
    py block_status.py "$(uri "bs-$img")" "$T/$img.qcow2" 1
    out=$(run_t 60 qemu-img compare -f raw -F qcow2 "$(uri "bs-$img")" "$T/$img.qcow2" 2>&1) ||
        fail "$img: data served by qnbd differs from what qemu reads: $out"
    stop_server "bs-$img"
done

# A writable single image after writes through NBD: block status still agrees with qemu-img map
# both while served and after the server is gone.
mkimg "$T/w.qcow2" 64M
start_server w -t -e 0 -A --discard=unmap "$T/w.qcow2"
"$PYTHON" - "$(uri w)" <<'EOF' || fail "writes through NBD"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x11" * (3 << 20), 1 << 20)
h.pwrite(b"\x22" * 4096, 8 << 20)
h.zero(1 << 20, 2 << 20)                       # punched (discard=unmap)
h.zero(65536, 3 << 20, nbd.CMD_FLAG_NO_HOLE)   # zeroed, allocated
h.trim(65536, 1 << 20)
h.pwrite(b"\x33" * 100, (64 << 20) - 100)
h.flush()
h.shutdown()
EOF
stop_server w
img_check "$T/w.qcow2"
start_server w2 -t -r -A -e 0 "$T/w.qcow2"
py block_status.py "$(uri w2)" "$T/w.qcow2" 1
finish
