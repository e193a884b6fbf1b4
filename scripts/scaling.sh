#!/usr/bin/env bash
# What a second reactor could gain on this machine (docs/SCALING.md): the same 4 KiB QD32 load
# (two fio jobs at depth 16, one connection each) served by one qnbd (one reactor thread) and
# by two qnbd processes, one image each (two reactors with nothing shared: the upper bound of
# any split of one export over two threads). Prints IOPS, server CPU per request and fio's own
# CPU for each, alternating the two shapes over --rounds runs.
#
#   scripts/scaling.sh [--size 1G] [--runtime 10] [--rounds 2] [--dir DIR] [--qnbd PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source "$root/scripts/bench/lib.bash"
rounds=2
while [ $# -gt 0 ]; do
  common_option "$1" "${2:-}" && { shift 2; continue; }
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bench_setup
[ -f "$dir/full2.qcow2" ] || cp "$dir/full.qcow2" "$dir/full2.qcow2"

# image WORKLOAD N: the image server N (1 or 2) serves.
image() {
  case $1 in
    read) [ "$2" = 1 ] && echo "$dir/full.qcow2" || echo "$dir/full2.qcow2" ;;
    write) rm -f "$dir/scale-$2.qcow2"
      qemu-img create -q -f qcow2 "$dir/scale-$2.qcow2" "$bytes"; echo "$dir/scale-$2.qcow2" ;;
  esac
}

# run WORKLOAD SERVERS: prints "iops server_us_per_request fio_cpu_percent".
run() {
  local w=$1 servers=$2 pids=() ports=() i cpu=0
  drop_caches
  for i in $(seq "$servers"); do
    start_server qnbd "$(image "$w" "$i")"
    pids+=("$srv_pid") ports+=("$srv_port")
  done
  # Two jobs at depth 16: both on server 1, or one on each server.
  fio --ioengine=nbd --rw="rand$w" --bs=4k --iodepth=16 --size="$bytes" --time_based \
      --runtime="$runtime" --group_reporting --output-format=json --output="$dir/scale.json" \
      --name=a --uri="$(nbd_uri "${ports[0]}")" --name=b --uri="$(nbd_uri "${ports[-1]}")" \
      >/dev/null 2>"$dir/fio.err" || { cat "$dir/fio.err" >&2; exit 1; }
  for i in "${!pids[@]}"; do
    srv_pid=${pids[$i]}
    stop_server
    cpu=$(awk -v c="$cpu" -v s="$srv_cpu" 'BEGIN { printf "%.2f", c + s }')
  done
  python3 - "$dir/scale.json" "$cpu" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
print(f"{iops:.0f} {float(sys.argv[2]) * 1e6 / ios:.1f} {j['usr_cpu'] + j['sys_cpu']:.0f}")
PY
}

printf '%-28s %9s %14s %10s\n' shape IOPS "server us/req" "fio cpu %"
for _ in $(seq "$rounds"); do
  for w in read write; do
    for n in 1 2; do
      read -r iops us fcpu <<<"$(run "$w" "$n")"
      printf '%-28s %9s %14s %10s\n' "rand$w 4k 2x16, $n server(s)" "$iops" "$us" "$fcpu"
    done
  done
done
