#!/bin/bash
# py/stress.py (6 connections of verified random I/O, see stress.sh) on: a qcow2 image with
# --cache=none (O_DIRECT, unaligned requests), 512-byte clusters with a tiny --l2-cache-size
# (constant metadata eviction), a 512-byte-cluster image with 64-bit refcounts filled by nbdcopy
# through qnbd (the refcount table must grow and move while serving), and a raw file with
# --cache=directsync. Each image is qemu-img check clean and identical to the model afterwards.
source "$(dirname "$0")/lib/common.bash"
source "$(dirname "$0")/lib/stress.bash"
need qemu-img qemu-io nbdcopy
need_python_nbd

cd "$T" || fail "cd"
head -c $((8 << 20)) /dev/urandom >rand8m
qemu-img create -q -f raw src.raw 16M || fail "qemu-img create"
dd if=rand8m of=src.raw bs=1M seek=2 conv=notrunc status=none || fail "dd"

mkimg direct.qcow2 16M
qemu-io -f qcow2 -c "write -s rand8m 1M 8M" direct.qcow2 >/dev/null || fail "qemu-io"
scenario direct direct.qcow2 6 --cache=none

mkimg tiny.qcow2 16M -o cluster_size=512
qemu-io -f qcow2 -c "write -s rand8m 3M 4M" tiny.qcow2 >/dev/null || fail "qemu-io"
scenario evict tiny.qcow2 8 --l2-cache-size=2K

# One refcount table cluster covers 2 MiB of file here: filling 8 MiB grows (moves) the table.
mkimg grow.qcow2 16M -o cluster_size=512,refcount_bits=64
rt_before=$(od -An -t u8 --endian=big -j 48 -N 8 grow.qcow2 | tr -d ' ')
start_server grow -t -e 0 "$T/grow.qcow2"
run_t 180 nbdcopy --connections=4 src.raw "$(uri grow)" || fail "nbdcopy into the 512-byte-cluster image"
stop_server grow
img_check grow.qcow2
out=$(qemu-img compare -f raw -F qcow2 src.raw grow.qcow2 2>&1) || fail "grow.qcow2 differs from its source: $out"
rt_after=$(od -An -t u8 --endian=big -j 48 -N 8 grow.qcow2 | tr -d ' ')
[[ $rt_before != "$rt_after" ]] || fail "the refcount table did not move: the growth path was not exercised"
scenario grown grow.qcow2 9

cp src.raw disk.raw
scenario raw disk.raw 7 -f raw --cache=directsync
finish
