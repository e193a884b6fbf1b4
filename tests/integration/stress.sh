#!/bin/bash
# Concurrent random I/O from 6 connections (py/stress.py: every cluster shared by all
# connections, each byte with one writer, 16 requests in flight per connection, writes/zeroes/
# trims/reads/flushes verified against a byte model) on: a fresh image, 4 KiB clusters, extended
# L2 entries, a compressed image (qemu-img convert -c), and an overlay over a backing file
# (copy-on-write; the backing file stays unchanged). After each run the server exits cleanly,
# qemu-img check is clean and qemu-img compare finds the image identical to the model.
# (stress_more.sh: O_DIRECT, raw files, metadata cache eviction, refcount table growth.)
source "$(dirname "$0")/lib/common.bash"
source "$(dirname "$0")/lib/stress.bash"
need qemu-img qemu-io
need_python_nbd

cd "$T" || fail "cd"
head -c $((8 << 20)) /dev/urandom >rand8m

mkimg fresh.qcow2 16M
scenario fresh fresh.qcow2 1

mkimg small.qcow2 16M -o cluster_size=4096
scenario small small.qcow2 2

mkimg l2x.qcow2 16M -o extended_l2=on,cluster_size=64k
qemu-io -f qcow2 -c "write -s rand8m 0 8M" l2x.qcow2 >/dev/null || fail "qemu-io"
scenario l2x l2x.qcow2 3

qemu-img create -q -f raw src.raw 16M || fail "qemu-img create"
dd if=rand8m of=src.raw bs=1M seek=2 conv=notrunc status=none || fail "dd"
qemu-img convert -c -f raw -O qcow2 src.raw comp.qcow2 || fail "qemu-img convert -c"
scenario comp comp.qcow2 4

qemu-img create -q -f qcow2 base.qcow2 16M || fail "qemu-img create"
qemu-io -f qcow2 -c "write -s rand8m 4M 8M" base.qcow2 >/dev/null || fail "qemu-io"
"$QNBD" create -b base.qcow2 -F qcow2 over.qcow2 16M >/dev/null || fail "qnbd create -b"
cp base.qcow2 base.orig
scenario over over.qcow2 5
cmp base.qcow2 base.orig || fail "the backing file was modified"
qemu-img compare -q -f qcow2 -F qcow2 base.qcow2 over.qcow2 && fail "the overlay reads like its backing file: no writes landed?"
finish
