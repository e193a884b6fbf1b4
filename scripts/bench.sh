#!/usr/bin/env bash
# Benchmarks qnbd side by side with qemu-nbd (and raw-file servers as the limit), all driven by
# fio's nbd engine, and prints one table with ratios, qnbd's CPU time and peak RSS.
#
#   scripts/bench.sh [--size 1G] [--runtime 10] [--dir /var/tmp/qnbd-bench] [--qnbd PATH]
#                    [--only W1,W3,...] [--smoke]
#
# W1 1 MiB sequential reads, depth 1, over four seed images (seq, reverse, rand, part-rand)
# W2 the same as writes
# W3 16 jobs x 4 KiB random writes, fsync after each, fresh image
# W4 4 KiB random reads, depth 32, fully allocated image
# W5 4 KiB random writes, depth 32, no flushes, fresh image
# W6 W3 and W4 at 1, 4, 16, 64 connections; W4 on a 1 TiB image with 64x--size allocated
# W7 W1 (seq and rand images) and W4 over TLS (x509), qnbd against qemu-nbd, both with TLS
# W8 the block-device path: fio (libaio, --direct=1) on a loop device over nbdfuse over the
#    server: 4 KiB QD32 random reads and writes, and W3's 16 synchronous writers; the raw and
#    dev columns are the same fio job straight on the raw file
# The dev column of W3-W5 is their fio job straight on the raw file (libaio or psync, O_DIRECT);
# W1's is a 1 MiB read at depth 1 (seq) and 64 KiB random reads at depth 16 (rand).
# Then the W3 and W5 write patterns once more through qnbd with fio --verify, and qemu-img check.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source "$root/scripts/bench/lib.bash"
only="" smoke=0
while [ $# -gt 0 ]; do
  common_option "$1" "${2:-}" && { shift 2; continue; }
  case $1 in
    --only) only=$2; shift 2 ;;
    --smoke) smoke=1; size=32M; runtime=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bench_setup
[ "$smoke" = 1 ] && scales="1 4" || scales="1 4 16 64"

want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
# W1's dev column: one 1 MiB read at a time (seq), and 16 scattered 64 KiB reads at once (rand:
# what a 1 MiB request over 16 scattered clusters asks of the device); dev(rand)/dev(seq) is the
# device's own rand/seq ratio.
if want W1; then for o in seq reverse rand part-rand; do
  case $o in
    seq) dev_job="--rw=read --bs=1M --iodepth=1 --size=$bytes --time_based --runtime=$runtime" ;;
    rand) dev_job="--rw=randread --bs=64k --iodepth=16 --size=$bytes --time_based --runtime=$runtime" ;;
    *) dev_job="" ;;
  esac
  row "W1 read 1M qd1 $o" MB/s "$dir/t-$o.qcow2" "$dir/raw-full.img" \
    --rw=read --bs=1M --iodepth=1 --size="$bytes" --time_based --runtime="$runtime"; done; fi
dev_job=""
if want W2; then for o in seq reverse rand part-rand; do
  row "W2 write 1M qd1 $o" MB/s "$dir/t-$o.qcow2" "$dir/raw-full.img" \
    --rw=write --bs=1M --iodepth=1 --size="$bytes" --time_based --runtime="$runtime"; done; fi
# W3-W5 also run their fio job straight on the raw file (the dev column: the device's limit).
if want W3; then
  dev_job="--ioengine=psync --rw=randwrite --bs=4k --numjobs=16 --fsync=1 --size=$bytes --time_based --runtime=$runtime"
  row "W3 randwrite 4k 16 jobs fsync=1" IOPS @fresh @rawfresh \
    --rw=randwrite --bs=4k --iodepth=1 --numjobs=16 --fsync=1 --size="$bytes" --time_based --runtime="$runtime"
fi
if want W4; then
  dev_job="--rw=randread --bs=4k --iodepth=32 --size=$bytes --time_based --runtime=$runtime"
  row "W4 randread 4k qd32" IOPS "$dir/full.qcow2" "$dir/raw-full.img" \
    --rw=randread --bs=4k --iodepth=32 --size="$bytes" --time_based --runtime="$runtime"
fi
if want W5; then
  dev_job="--rw=randwrite --bs=4k --iodepth=32 --size=$bytes --time_based --runtime=$runtime"
  row "W5 randwrite 4k qd32" IOPS @fresh @rawfresh \
    --rw=randwrite --bs=4k --iodepth=32 --size="$bytes" --time_based --runtime="$runtime"
fi
dev_job=""
if want W6; then
  for n in $scales; do
    row "W6 W3 at $n conns" IOPS @fresh @rawfresh \
      --rw=randwrite --bs=4k --iodepth=1 --numjobs="$n" --fsync=1 --size="$bytes" --time_based --runtime="$runtime"
  done
  for n in $scales; do
    row "W6 W4 at $n conns" IOPS "$dir/full.qcow2" "$dir/raw-full.img" \
      --rw=randread --bs=4k --iodepth=$((32 / (n < 32 ? n : 32) > 0 ? 32 / (n < 32 ? n : 32) : 1)) \
      --numjobs="$n" --size="$bytes" --time_based --runtime="$runtime"
  done
  row "W6 W4 1 TiB image" IOPS "$dir/huge.qcow2" "" \
    --rw=randread --bs=4k --iodepth=32 --size="$((bytes * 64))" --time_based --runtime="$runtime"
fi
if want W7; then
  prepare_pki
  bench_tls=1
  for o in seq rand; do
    row "W7 W1 $o over TLS" MB/s "$dir/t-$o.qcow2" "" \
      --rw=read --bs=1M --iodepth=1 --size="$bytes" --time_based --runtime="$runtime"
  done
  row "W7 W4 over TLS" IOPS "$dir/full.qcow2" "" \
    --rw=randread --bs=4k --iodepth=32 --size="$bytes" --time_based --runtime="$runtime"
  bench_tls=0
fi
if want W8 && ! { command -v nbdfuse >/dev/null && [ -w /dev/fuse ] && losetup -f >/dev/null 2>&1; }; then
  echo "W8 skipped: needs nbdfuse, /dev/fuse and a free loop device (root)" >&2
elif want W8; then
  row_blockdev "W8 blockdev randread 4k qd32" IOPS "$dir/full.qcow2" "$dir/raw-full.img" \
    --rw=randread --bs=4k --iodepth=32 --size="$bytes" --time_based --runtime="$runtime"
  row_blockdev "W8 blockdev randwrite 4k qd32" IOPS @fresh @rawfresh \
    --rw=randwrite --bs=4k --iodepth=32 --size="$bytes" --time_based --runtime="$runtime"
  row_blockdev "W8 blockdev 16 jobs fsync=1" IOPS @fresh @rawfresh \
    --rw=randwrite --bs=4k --ioengine=psync --numjobs=16 --fsync=1 --size="$bytes" \
    --time_based --runtime="$runtime"
fi
# Correctness of the write paths just measured: fio --verify through qnbd, then qemu-img check.
if want W3; then
  v=$((bytes < (64 << 20) ? bytes : (64 << 20)))
  verify "W3 (16 jobs, fsync=1)" --rw=randwrite --bs=4k --iodepth=1 --numjobs=16 --fsync=1 \
    --size=$((v / 16)) --offset_increment=$((v / 16))
fi
if want W5; then
  v=$((bytes < (256 << 20) ? bytes : (256 << 20)))
  verify "W5 (qd32)" --rw=randwrite --bs=4k --iodepth=32 --size="$v"
fi
print_table
