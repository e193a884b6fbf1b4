#!/usr/bin/env bash
# Where qnbd's CPU goes on one workload: runs the workload with fio's nbd engine against a
# Release qnbd while `perf record` samples the server (cpu-clock; this machine's perf has no
# hardware counters), then prints the server's CPU per request and the top symbols, self time.
#
#   scripts/profile.sh [--size 1G] [--runtime 10] [--dir /var/tmp/qnbd-bench] [--qnbd PATH]
#                      W4|W5|W3
#
# W4 4 KiB random reads, depth 32, fully allocated image; W5 4 KiB random writes, depth 32,
# fresh image; W3 16 jobs x 4 KiB random writes with fsync after each, fresh image. The same
# images as scripts/bench.sh (made by it when missing). perf.data stays in the directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source "$root/scripts/bench/lib.bash"
work=""
while [ $# -gt 0 ]; do
  common_option "$1" "${2:-}" && { shift 2; continue; }
  case $1 in
    W3|W4|W5) work=$1; shift ;;
    *) echo "usage: scripts/profile.sh [--size S] [--runtime N] [--dir D] [--qnbd PATH] W3|W4|W5" >&2; exit 2 ;;
  esac
done
[ -n "$work" ] || { echo "profile.sh: name a workload (W3, W4 or W5)" >&2; exit 2; }
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (linux-perf)" >&2; exit 1; }
bench_setup
case $work in
  W4) img=$dir/full.qcow2 args=(--rw=randread --bs=4k --iodepth=32) ;;
  W5) img=$(image_for @fresh) args=(--rw=randwrite --bs=4k --iodepth=32) ;;
  W3) img=$(image_for @fresh) args=(--rw=randwrite --bs=4k --iodepth=1 --numjobs=16 --fsync=1) ;;
esac
drop_caches
start_server qnbd "$img"
perf record -e cpu-clock -F 1999 -g -p "$srv_pid" -o "$dir/perf.data" >/dev/null 2>&1 &
perf_pid=$!
sleep 0.5
out=$(run_fio IOPS "${args[@]}" --size="$bytes" --time_based --runtime="$runtime")
kill -INT "$perf_pid"
wait "$perf_pid" 2>/dev/null || true
stop_server
iops=${out% *}
echo "$work: $iops IOPS; server CPU ${srv_cpu} s in ${runtime} s" \
  "($(awk -v c="$srv_cpu" -v i="$iops" -v t="$runtime" 'BEGIN { if (i > 0) printf "%.1f", c * 1e6 / (i * t); else printf "-" }') us per request)"
echo
echo "by shared object (self):"
perf report -i "$dir/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' |
  sed -E 's/ +$//' | cut -c1-120 | head -12
echo
echo "top symbols (self):"
perf report -i "$dir/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
  grep -E '^ +[0-9]' | sed -E 's/ +- +- *$//; s/ +$//' | cut -c1-160 | head -40
