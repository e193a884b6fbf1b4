#!/bin/bash
# Load: 64 connections at depth 32 for 60 s over the whole 1 GiB export (--discard=unmap,
# --l2-cache-size 4M). 60 fio jobs (nbd engine, one connection and one 16 MiB region each): 48
# do random reads and writes of 4-64 KiB, 12 trim each block and write it again (trimwrite);
# every write is verified with crc32c as they go (verify_backlog: a trim or a neighbour's write
# must not damage it), with a FLUSH every 128 writes; 4 more
# connections (py/loadzero.py) do writes, zero writes (with and without NO_HOLE), trims, reads
# and flushes against a byte model on the last 64 MiB. No errors, no verify failure; the
# server's peak RSS stays within its baseline + the cache + 4 MiB per connection (+ 64 MiB for
# the allocator); the image is qemu-img check clean after a clean stop.
source "$(dirname "$0")/lib/common.bash"
need qemu-img fio
need_python_nbd
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio has no nbd engine"

secs=${QNBD_LOAD_SECONDS:-60}
export ASAN_OPTIONS=${ASAN_OPTIONS}:quarantine_size_mb=16
cd "$T" || fail "cd"
mkimg "$T/a.qcow2" 1G
start_server a -t -e 0 --discard=unmap --l2-cache-size 4M "$T/a.qcow2"
pid=${SRV_PID[a]}
base=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
base_fds=$(ls "/proc/$pid/fd" | wc -l)
cat >"$T/load.fio" <<JOB
[global]
ioengine=nbd
uri=$(uri a)
thread
size=16M
offset_increment=16M
bsrange=4k-64k
iodepth=32
verify=crc32c
verify_backlog=256
verify_fatal=1
fsync=128
time_based
runtime=$secs
group_reporting

[mixed]
numjobs=48
rw=randrw
rwmixread=50

[trimwrite]
numjobs=12
offset=768M
rw=trimwrite
JOB
run_t $((secs + 240)) fio --output-format=normal "$T/load.fio" >"$T/fio.log" 2>&1 &
fio_pid=$!
track_pid "$fio_pid"
"$PYTHON" "$PY_DIR/loadzero.py" "$(uri a)" $((960 << 20)) 4 $((16 << 20)) "$secs" >"$T/zero.log" 2>&1 &
zero_pid=$!
track_pid "$zero_pid"
peak_conns=0
while alive "$fio_pid"; do
    c=$(ls "/proc/$pid/fd" | wc -l)
    ((c > peak_conns)) && peak_conns=$c
    sleep 1
done
wait "$fio_pid"; frc=$?
wait "$zero_pid" || { cat "$T/zero.log" >&2; fail "loadzero.py failed"; }
cat "$T/zero.log"
((frc == 0)) || { tail -40 "$T/fio.log" >&2; fail "fio failed (exit $frc)"; }
grep -iE "verify.*(bad|fail)|crc32c.*fail|err= *[1-9]|leaked" "$T/fio.log" && { tail -40 "$T/fio.log" >&2; fail "fio reported errors"; }
grep -E "^ *(READ|WRITE|TRIM):|issued rwts" "$T/fio.log" | sed 's/^/    /'
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
bound=$((base + 4096 + 64 * 4096 + 65536))
say "server RSS: $base kB at the start, peak $hwm kB (bound $bound kB); up to $peak_conns descriptors"
((hwm <= bound)) || fail "peak RSS $hwm kB over the bound $bound kB"
((peak_conns - base_fds >= 64)) || fail "only $((peak_conns - base_fds)) connections open at once, expected 64"
check_alive a "after the load"
stop_server a
img_check "$T/a.qcow2"
finish
