#!/usr/bin/env bash
# Soak: the load of tests/integration/load.sh (fio over most of the export, plus 8 connections of
# tests/integration/py/crashwriter.py) with kill -9 of the server at random moments, for MINUTES
# (default 30). After each kill: qemu-img check finds no corruption (leaks allowed), the server
# starts again on the same image and every write acknowledged before a completed FLUSH reads
# back. At the end a clean close must leave the image fully clean (no leaks, no reserved tail).
# Not part of ctest. Usage: scripts/soak.sh [MINUTES] [BUILD_DIR]   (default build-test)
set -uo pipefail
minutes=${1:-30}
build=${2:-build-test}
cd "$(dirname "$0")/.."
export QNBD=$PWD/$build/qnbd QNBD_SOURCE_DIR=$PWD
# common.bash names the run after the script and gives it $T, start_server, fail, ...
source tests/integration/lib/common.bash
need qemu-img fio
need_python_nbd
export ASAN_OPTIONS=${ASAN_OPTIONS}:quarantine_size_mb=16

check_not_corrupt() {
    local out rc
    out=$(qemu-img check -f qcow2 "$1" 2>&1); rc=$?
    [[ $rc == 0 || ($rc == 3 && $2 == 1) ]] || { echo "$out" >&2; fail "qemu-img check: exit $rc"; }
    grep -qiE "^ERROR|corrupt" <<<"$out" && { echo "$out" >&2; fail "qemu-img check reports corruption"; }
    sed -n 's/^\([0-9]*\) leaked clusters.*/\1 leaked clusters/p' <<<"$out"
}

img=$T/soak.qcow2
mkimg "$img" 1G
cd "$T" || fail "cd"
end=$((SECONDS + minutes * 60))
round=0 prev="" kills=0 writes=0
while ((SECONDS < end)); do
    round=$((round + 1))
    start_server r$round -t -e 0 --discard=unmap "$img"
    u=$(uri r$round)
    if [[ -n $prev ]]; then
        "$PYTHON" "$PY_DIR/crashwriter.py" verify "$u" "$prev" durable || fail "round $round: flushed writes lost"
    fi
    st=$T/st$round
    mkdir "$st"
    "$PYTHON" "$PY_DIR/crashwriter.py" write "$u" "$st" 8 3600 "$round" >"$st.log" 2>&1 &
    writer=$!
    track_pid "$writer"
    fio --ioengine=nbd --uri="$u" --name=soak --numjobs=24 --thread --offset=64M --size=32M \
        --offset_increment=32M --bsrange=4k-64k --iodepth=32 --rw=randrw --fsync=128 \
        --time_based --runtime=3600 >"$T/fio$round.log" 2>&1 &
    fio_pid=$!
    track_pid "$fio_pid"
    for ((i = 0; i < 600; i++)); do [[ -e $st/ready ]] && break; sleep 0.05; done
    [[ -e $st/ready ]] || { cat "$st.log" >&2; fail "round $round: writers did not start"; }
    secs=$((RANDOM % 20 + 1)).$((RANDOM % 10))
    sleep "$secs"
    alive "$fio_pid" || { tail "$T/fio$round.log" >&2; fail "round $round: fio stopped before the kill"; }
    kill -KILL "${SRV_PID[r$round]}"
    wait_server_exit r$round 10 137
    kills=$((kills + 1))
    wait "$writer" || { cat "$st.log" >&2; fail "round $round: the writers failed"; }
    wait "$fio_pid" 2>/dev/null
    n=$(sed -n 's/.*: \([0-9]*\) writes and.*/\1/p' "$st.log")
    writes=$((writes + ${n:-0}))
    say "round $round: killed after ${secs} s, ${n:-0} crashwriter writes acknowledged; $(check_not_corrupt "$img" 1)"
    prev=$st
done
start_server last -t -e 0 "$img"
"$PYTHON" "$PY_DIR/crashwriter.py" verify "$(uri last)" "$prev" durable || fail "flushed writes lost at the last kill"
stop_server last
check_not_corrupt "$img" 0 >/dev/null
size=$(stat -c %s "$img")
image_end=$(qemu-img check -f qcow2 "$img" 2>/dev/null | sed -n 's/^Image end offset: //p')
((size <= image_end)) || fail "$img is $size bytes, past its end at $image_end"
say "$kills kills in $minutes min, $writes crashwriter writes acknowledged; clean at the end"
finish
