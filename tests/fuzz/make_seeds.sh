#!/usr/bin/env bash
# Generates the seed corpora of the fuzz targets into OUT_DIR (nothing binary is checked in):
#   OUT_DIR/protocol, OUT_DIR/connection   from nbd_seeds.py
#   OUT_DIR/image                          qcow2 images made by qemu-img and qemu-io, in the
#                                          input format of fuzz_image (f0, f1, f2 joined by
#                                          its separator; f0 names f1 as backing, f2 as data)
#                                          and regress-*: images of bugs the targets found
#   OUT_DIR/qcow2                          fuzz_qcow2 inputs: a selector byte and the first
#                                          cluster, a table or a compressed cluster of those
# Usage: make_seeds.sh OUT_DIR
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$out"
mkdir -p "$out/image" "$out/qcow2"
python3 "$here/nbd_seeds.py" "$out"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sep=$'\nQNBD-FUZZ-NEXT-FILE\n'
io() { qemu-io -f qcow2 "$@" >/dev/null; }

# One image case: runs its commands in a fresh directory, then joins f0 [f1 [f2]].
seed() {
    local name=$1
    shift
    rm -rf "$work/d" && mkdir "$work/d"
    (cd "$work/d" && "$@")
    {
        cat "$work/d/f0"
        for f in f1 f2; do
            if [[ -e $work/d/$f ]]; then printf '%s' "$sep" && cat "$work/d/$f"; fi
        done
    } >"$out/image/gen-$name"
}

plain() {  # plain OPTIONS [SIZE]: an image with data, zeroes and a discard
    qemu-img create -q -f qcow2 -o "$1" f0 "${2:-256K}"
    io -c 'write -P 0x11 0 8K' -c 'write -P 0x22 100K 3K' -c 'write -z 64K 16K' \
        -c 'discard 100K 1K' f0
}
compressed() {
    qemu-img create -q -f qcow2 -o "cluster_size=4096,compression_type=$1" f0 128K
    io -c 'write -c -P 0x33 0 4K' -c 'write -c -P 0x44 8K 4K' -c 'write -P 0x55 16K 4K' f0
}
backing() {
    qemu-img create -q -f qcow2 -o cluster_size=512 f1 64K
    io -c 'write -P 0x66 0 32K' f1
    qemu-img create -q -f qcow2 -o cluster_size=1024 -b f1 -F qcow2 f0 96K
    io -c 'write -P 0x77 4K 2K' -c 'write -z 16K 4K' f0
}
raw_backing() {
    head -c 16384 /dev/zero | tr '\0' 'r' >f1
    qemu-img create -q -f qcow2 -o cluster_size=512 -b f1 -F raw f0 32K
    io -c 'write -P 0x78 512 512' f0
}
data_file() {
    qemu-img create -q -f qcow2 -o "cluster_size=4096,data_file=f2,$1" f0 16K
    io -c 'write -P 0x88 0 8K' -c 'write -z 12K 4K' f0
}
dirty() {  # lazy refcounts and an aborted qemu-io: the dirty bit stays set
    qemu-img create -q -f qcow2 -o cluster_size=512,lazy_refcounts=on f0 64K
    (qemu-io -f qcow2 -c 'write -P 0x99 0 4K' -c abort f0 || true) >/dev/null 2>&1
}
snapshot() {
    plain cluster_size=1024
    qemu-img snapshot -c snap1 f0
    io -c 'write -P 0xaa 0 2K' f0
}
bitmap() {
    plain cluster_size=4096
    qemu-img bitmap --add f0 bm0
    qemu-img bitmap --add --disable -g 512 f0 bm1
    io -c 'write -P 0x5a 0 8K' f0
}

seed v3-512 plain cluster_size=512
seed v3-4k-refcount1 plain cluster_size=4096,refcount_bits=1
seed v3-2k-refcount64 plain cluster_size=2048,refcount_bits=64
seed v2 plain cluster_size=512,compat=0.10
seed extended-l2 plain cluster_size=16384,extended_l2=on
seed preallocated plain cluster_size=2048,preallocation=metadata 128K
seed zlib compressed zlib
seed zstd compressed zstd
seed backing backing
seed raw-backing raw_backing
seed data-file data_file data_file_raw=off
seed data-file-raw data_file data_file_raw=on
seed dirty dirty
seed snapshot snapshot
seed bitmap bitmap

python3 "$here/qcow2_seeds.py" "$out/image" "$out/qcow2"
echo "seeds: $(for d in "$out"/*/; do printf '%s=%s ' "$(basename "$d")" "$(ls "$d" | wc -l)"; done)"
