# Helpers of scripts/bench.sh: images, servers, fio runs and the result table.
# shellcheck shell=bash

rows=()
verifies=()
port=$((20000 + RANDOM % 20000))

size=1G runtime=10 dir=/var/tmp/qnbd-bench qnbd=""

# common_option NAME VALUE: takes one of the options every bench script has (--size, --runtime,
# --dir, --qnbd; defaults above); fails for any other NAME, which the script handles itself.
common_option() {
  case $1 in
    --size) size=$2 ;;
    --runtime) runtime=$2 ;;
    --dir) dir=$2 ;;
    --qnbd) qnbd=$2 ;;
    *) return 1 ;;
  esac
}

# bench_setup: after the options: the Release qnbd (built unless --qnbd), the directory, the
# size in bytes, and the images.
bench_setup() {
  export PATH=/usr/bin:$PATH
  build_qnbd
  mkdir -p "$dir"
  bytes=$(to_bytes "$size")
  prepare_images
}

to_bytes() {
  local s=$1 n=${1%[KkMmGgTt]}
  case ${s: -1} in
    K|k) echo $((n << 10)) ;; M|m) echo $((n << 20)) ;; G|g) echo $((n << 30)) ;; T|t) echo $((n << 40)) ;;
    *) echo "$s" ;;
  esac
}

# Seed images (written by qemu-io in four orders), a fully allocated image, a 1 TiB image with
# 64 x size of preallocated metadata, and raw files for the raw-file servers.
prepare_images() {
  local o
  for o in seq reverse rand part-rand; do
    [ -f "$dir/t-$o.qcow2" ] && [ "$(qemu-img info --output=json "$dir/t-$o.qcow2" | python3 -c 'import json,sys;print(json.load(sys.stdin)["virtual-size"])')" = "$bytes" ] && continue
    echo "creating $dir/t-$o.qcow2 ($size, $o order)" >&2
    qemu-img create -q -f qcow2 "$dir/t-$o.qcow2" "$bytes"
    python3 "$root/scripts/bench/gen-writes.py" "$o" "$bytes" | qemu-io "$dir/t-$o.qcow2" >/dev/null
  done
  if [ ! -f "$dir/full.qcow2" ] || [ "$(stat -c %s "$dir/raw-full.img" 2>/dev/null)" != "$bytes" ]; then
    echo "creating fully allocated images" >&2
    head -c "$bytes" /dev/urandom > "$dir/raw-full.img"
    qemu-img convert -f raw -O qcow2 "$dir/raw-full.img" "$dir/full.qcow2"
  fi
  if [ ! -f "$dir/huge.qcow2" ]; then
    qemu-img create -q -f qcow2 -o preallocation=metadata "$dir/huge.qcow2" "$((bytes * 64))"
    qemu-img resize -q "$dir/huge.qcow2" 1T
  fi
}

# The URI of the server on port $1 (over TLS with bench_tls=1, as the W7 rows set it).
nbd_uri() {
  if [ "${bench_tls:-0}" = 1 ]; then
    # fio may not name local files in a URI (tls-certificates=): the server certificate is not
    # verified, and the server asks for none (verify-peer=off).
    echo "nbds://127.0.0.1:$1/?tls-verify-peer=false"
  else
    echo "nbd://127.0.0.1:$1"
  fi
}

# TLS credentials for the W7 rows (made once, in qemu's layout).
prepare_pki() {
  [ -f "$dir/pki/server/server-cert.pem" ] && return 0
  fail() { echo "bench: $*" >&2; exit 1; }
  source "$root/tests/integration/lib/tls.bash"
  rm -rf "$dir/pki"
  make_pki "$dir/pki"
}

# The server options of TLS with bench_tls=1 (the same x509 credentials for both servers).
tls_opts() {
  [ "${bench_tls:-0}" = 1 ] &&
    echo "--object tls-creds-x509,id=tls0,endpoint=server,dir=$dir/pki/server,verify-peer=off --tls-creds tls0"
  return 0
}

wait_port() {
  local i
  for i in $(seq 200); do
    nbdinfo --size "$(nbd_uri "$1")" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# start_server KIND IMAGE: starts a server on a new port; sets srv_pid and srv_port.
start_server() {
  local kind=$1 image=$2
  port=$((port + 1))
  srv_port=$port
  case $kind in
    # shellcheck disable=SC2046  # tls_opts is words
    qnbd) "$qnbd" -t -e 0 --cache=none $(tls_opts) -p "$port" "$image" 2>"$dir/qnbd.log" & ;;
    # shellcheck disable=SC2046
    qemu-nbd) qemu-nbd -t -e 0 --cache=none --aio=native $(tls_opts) -f qcow2 -p "$port" "$image" 2>"$dir/qemu-nbd.log" & ;;
    qemu-nbd-raw) qemu-nbd -t -e 0 --cache=none --aio=native -f raw -p "$port" "$image" 2>/dev/null & ;;
    nbdkit) nbdkit -f -i 127.0.0.1 -p "$port" file "$image" cache=none 2>/dev/null & ;;
  esac
  srv_pid=$!
  wait_port "$port" "$srv_pid" || { echo "$kind did not start" >&2; cat "$dir/qnbd.log" >&2 || true; exit 1; }
}

# stop_server: records CPU seconds and peak RSS (KiB) of the server, then stops it.
stop_server() {
  local tck
  tck=$(getconf CLK_TCK)
  srv_cpu=$(awk -v t="$tck" '{printf "%.2f", ($14 + $15) / t}' "/proc/$srv_pid/stat")
  srv_rss=$(awk '/VmHWM/ {print $2}' "/proc/$srv_pid/status")
  kill -TERM "$srv_pid"
  wait "$srv_pid" 2>/dev/null || true
}

# run_fio UNIT ARGS...: prints "value bytes_moved" for the running server.
run_fio() {
  local unit=$1; shift
  fio --name=bench --ioengine=nbd --uri="$(nbd_uri "$srv_port")" --group_reporting \
      --output-format=json --output="$dir/fio.json" "$@" >/dev/null 2>"$dir/fio.err" || { cat "$dir/fio.err" >&2; echo "0 0"; return; }
  fio_figure "$unit"
}

# fio_figure UNIT: "value bytes_moved" of the fio run in $dir/fio.json.
fio_figure() {
  python3 - "$dir/fio.json" "$1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
r, w = j["read"], j["write"]
v = (r["bw_bytes"] + w["bw_bytes"]) / 1e6 if sys.argv[2] == "MB/s" else r["iops"] + w["iops"]
print(f"{v:.0f} {r['io_bytes'] + w['io_bytes']}")
PY
}

# build_qnbd: with no --qnbd, installs what is needed and builds the Release qnbd; sets qnbd.
build_qnbd() {
  [ -n "$qnbd" ] && return 0
  "$root/scripts/install-deps.sh"
  cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQNBD_SANITIZE=OFF \
    -DQNBD_TESTS=OFF >/dev/null
  cmake --build "$root/build" --target qnbd >/dev/null
  qnbd=$root/build/qnbd
}

# image_for SPEC: a path to benchmark on (@fresh and @rawfresh make new empty images).
image_for() {
  case $1 in
    @fresh) rm -f "$dir/fresh.qcow2"; qemu-img create -q -f qcow2 "$dir/fresh.qcow2" "$bytes"; echo "$dir/fresh.qcow2" ;;
    @rawfresh) rm -f "$dir/fresh.img"; truncate -s "$bytes" "$dir/fresh.img"; echo "$dir/fresh.img" ;;
    *) echo "$1" ;;
  esac
}

drop_caches() { sync; [ -w /proc/sys/vm/drop_caches ] && echo 1 > /proc/sys/vm/drop_caches || true; }

# measure KIND IMAGESPEC UNIT ARGS...: prints "value cpu_s_per_gib rss_kib check".
measure() { measure_by run_fio "$@"; }

# measure_by RUNNER KIND IMAGESPEC UNIT ARGS...: as measure, with RUNNER UNIT ARGS... running
# fio against the started server (run_fio: the nbd engine; fio_blockdev: a block device).
measure_by() {
  local runner=$1 kind=$2 spec=$3 unit=$4; shift 4
  local img out value moved check=-
  img=$(image_for "$spec")
  drop_caches
  start_server "$kind" "$img"
  out=$("$runner" "$unit" "$@")
  stop_server
  value=${out% *} moved=${out#* }
  if [[ $kind == qnbd* || $kind == qemu-nbd ]] && [[ $img == *.qcow2 ]] && [[ "$*" == *write* ]]; then
    qemu-img check -q "$img" >/dev/null 2>&1 && check=clean || check=DIRTY
  fi
  python3 -c "import sys; m=int(sys.argv[2]); print(sys.argv[1], '%.2f' % (float(sys.argv[3]) / (m / 2**30)) if m else '-', sys.argv[4], sys.argv[5])" \
    "$value" "$moved" "$srv_cpu" "$srv_rss" "$check"
}

# blockdev_up IMAGE-URI: mounts the export with nbdfuse and puts a loop device (direct I/O) over
# the FUSE file; sets blk_dev. blockdev_down undoes it.
blockdev_up() {
  local i
  mkdir -p "$dir/fuse"
  nbdfuse "$dir/fuse" "$1" 2>"$dir/nbdfuse.log" &
  fuse_pid=$!
  for i in $(seq 100); do [ -e "$dir/fuse/nbd" ] && break; sleep 0.05; done
  blk_dev=$(losetup --direct-io=on -f --show "$dir/fuse/nbd") ||
    { echo "losetup failed on $dir/fuse/nbd" >&2; blockdev_down; exit 1; }
}
blockdev_down() {
  [ -n "${blk_dev:-}" ] && losetup -d "$blk_dev"
  blk_dev=""
  umount "$dir/fuse" 2>/dev/null || true
  wait "$fuse_pid" 2>/dev/null || true
}

# run_fio_dev UNIT DEVICE ARGS...: fio with libaio and O_DIRECT on a block device or file.
run_fio_dev() {
  local unit=$1 dev=$2; shift 2
  fio --name=bench --ioengine=libaio --direct=1 --filename="$dev" --group_reporting \
      --output-format=json --output="$dir/fio.json" "$@" >/dev/null 2>"$dir/fio.err" || { cat "$dir/fio.err" >&2; echo "0 0"; return; }
  fio_figure "$unit"
}

# fio_blockdev UNIT ARGS...: fio on a loop device over nbdfuse over the started server (the
# block-device path, on a host without the nbd module).
fio_blockdev() {
  local unit=$1; shift
  blockdev_up "$(nbd_uri "$srv_port")"
  run_fio_dev "$unit" "$blk_dev" "$@"
  blockdev_down
}

# row_blockdev NAME UNIT QCOW2IMAGE RAWIMAGE FIOARGS...: qnbd and qemu-nbd through the block
# device; the raw column is fio straight on the raw file (the device's own limit).
row_blockdev() {
  local name=$1 unit=$2 qimg=$3 rimg=$4; shift 4
  local q e raw spb f
  echo "running $name" >&2
  q=($(measure_by fio_blockdev qnbd "$qimg" "$unit" "$@"))
  spb=$(syncs_per_barrier)
  e=($(measure_by fio_blockdev qemu-nbd "$qimg" "$unit" "$@"))
  f=$(image_for "$rimg")
  drop_caches
  raw=$(run_fio_dev "$unit" "$f" "$@" | cut -d' ' -f1)
  rows+=("$name|$unit|${q[0]}|${e[0]}|$raw|$raw|${q[1]}|${e[1]}|$((q[2] / 1024))|$spb|${q[3]}")
}

# device UNIT RAWIMAGE FIOARGS...: the same fio job straight on the raw file (libaio, O_DIRECT;
# a job's own --ioengine wins): the device's own limit for that job.
device() {
  local unit=$1 f; shift
  f=$(image_for "$1"); shift
  drop_caches
  run_fio_dev "$unit" "$f" "$@" | cut -d' ' -f1
}

# syncs per barrier from qnbd's closing statistics line.
syncs_per_barrier() {
  sed -n 's/.* \([0-9]*\) barriers, \([0-9]*\) fdatasyncs.*/\1 \2/p' "$dir/qnbd.log" | tail -1 |
    awk '{ if ($1 > 0) printf "%.2f", $2 / $1; else printf "-" }'
}

# row NAME UNIT QCOW2IMAGE RAWIMAGE FIOARGS...: measures qnbd, qemu-nbd and the raw servers;
# with dev_job set (fio arguments for the raw file), the device column too.
row() {
  local name=$1 unit=$2 qimg=$3 rimg=$4; shift 4
  local q e r1=0 r2=0 raw=0 dev=- spb
  echo "running $name" >&2
  q=($(measure qnbd "$qimg" "$unit" "$@"))
  spb=$(syncs_per_barrier)
  e=($(measure qemu-nbd "$qimg" "$unit" "$@"))
  if [ -n "$rimg" ]; then
    r1=$(measure qemu-nbd-raw "$rimg" "$unit" "$@" | cut -d' ' -f1)
    command -v nbdkit >/dev/null && r2=$(measure nbdkit "$rimg" "$unit" "$@" | cut -d' ' -f1)
    raw=$((r1 > r2 ? r1 : r2))
  fi
  [ -n "${dev_job:-}" ] && dev=$(device "$unit" "$rimg" $dev_job)
  rows+=("$name|$unit|${q[0]}|${e[0]}|$raw|$dev|${q[1]}|${e[1]}|$((q[2] / 1024))|$spb|${q[3]}")
}

# verify NAME FIOARGS...: fio writes through qnbd to a fresh image with crc32c verification
# (every block read back and checked), then qemu-img check; records "pass" or what failed.
verify() {
  local name=$1 img res=pass; shift
  echo "verifying $name" >&2
  img=$(image_for @fresh)
  start_server qnbd "$img"
  (cd "$dir" && fio --name=verify --ioengine=nbd --uri="nbd://127.0.0.1:$srv_port" \
      --verify=crc32c --verify_fatal=1 --do_verify=1 "$@" >"$dir/verify.log" 2>&1) ||
    res="fio verify FAILED (see $dir/verify.log)"
  grep -q 'READ:' "$dir/verify.log" || res="fio read nothing back (see $dir/verify.log)"
  stop_server
  qemu-img check -q "$img" >/dev/null 2>&1 || res="$res; qemu-img check FAILED"
  verifies+=("$name|$res")
}

print_table() {
  printf '\n%-34s %-5s %9s %9s %9s %9s %8s %8s %8s %9s %9s %7s %6s %6s\n' workload unit qnbd qemu-nbd \
    raw dev q/qemu q/raw q/dev "cpu s/GiB" "qemu cpu" "rss MiB" "sync/b" check
  local r
  for r in "${rows[@]}"; do
    IFS='|' read -r name unit q e raw dev qc ec rss spb check <<<"$r"
    printf '%-34s %-5s %9s %9s %9s %9s %8s %8s %8s %9s %9s %7s %6s %6s\n' "$name" "$unit" "$q" "$e" \
      "$raw" "$dev" "$(ratio "$q" "$e")" "$(ratio "$q" "$raw")" "$(ratio "$q" "$dev")" "$qc" "$ec" \
      "$rss" "$spb" "$check"
  done
  [ ${#verifies[@]} -eq 0 ] && return
  echo
  for r in "${verifies[@]}"; do printf 'verify %-34s %s\n' "${r%%|*}" "${r#*|}"; done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
