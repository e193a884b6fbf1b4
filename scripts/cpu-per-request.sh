#!/usr/bin/env bash
# Server CPU per 4 KiB request: a fixed number of QD32 random reads (the fully allocated image)
# and random writes (a fresh image) through fio's nbd engine, served by qnbd, by a second qnbd
# binary (--vs, to compare two builds) and by qemu-nbd, alternating over --rounds runs. Prints
# each run's IOPS and the server's CPU time (user + system, from start to stop) per request.
#
#   scripts/cpu-per-request.sh [--requests 150000] [--rounds 3] [--vs OTHER_QNBD]
#                              [--size 1G] [--dir DIR] [--qnbd PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source "$root/scripts/bench/lib.bash"
requests=150000 rounds=3 other=""
while [ $# -gt 0 ]; do
  common_option "$1" "${2:-}" && { shift 2; continue; }
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --vs) other=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bench_setup
main=$qnbd

# run KIND BINARY WORKLOAD: prints "iops server_us_per_request".
run() {
  local kind=$1 w=$3 img
  qnbd=$2
  if [ "$w" = read ]; then img=$dir/full.qcow2; else img=$(image_for @fresh); fi
  drop_caches
  start_server "$kind" "$img"
  fio --name=cpu --ioengine=nbd --uri="$(nbd_uri "$srv_port")" --rw="rand$w" --bs=4k \
      --iodepth=32 --size="$bytes" --number_ios="$requests" --output-format=json \
      --output="$dir/cpu.json" >/dev/null 2>"$dir/fio.err" || { cat "$dir/fio.err" >&2; exit 1; }
  stop_server
  python3 - "$dir/cpu.json" "$srv_cpu" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
print(f"{j['read']['iops'] + j['write']['iops']:.0f} {float(sys.argv[2]) * 1e6 / ios:.1f}")
PY
}

printf '%-10s %-40s %9s %14s\n' workload server IOPS "server us/req"
for _ in $(seq "$rounds"); do
  for w in read write; do
    servers=("qnbd $main")
    [ -n "$other" ] && servers+=("qnbd $other")
    servers+=("qemu-nbd -")
    for s in "${servers[@]}"; do
      read -r iops us <<<"$(run ${s% *} "${s#* }" "$w")"
      name=${s% *}
      [ "$name" = qnbd ] && [ -n "$other" ] && name="qnbd ${s#* }"
      printf '%-10s %-40s %9s %14s\n' "rand$w" "$name" "$iops" "$us"
    done
  done
done
