#!/bin/bash
# SIGTERM and SIGINT under load: 8 connections (py/crashwriter.py) write with 16 requests in
# flight and periodic flushes, plus fio with 4 jobs at depth 16, when the signal comes. The
# server stops reading requests, finishes the ones in flight and sends their replies (no "not
# taken" warning), writes its metadata back and exits 0; the image is qemu-img check clean (no
# leaks), its dirty bit is clear, the file ends at the last used cluster (no reserved tail left),
# and every write that was acknowledged -- flushed or not -- reads back after a restart.
# Replies under way at the signal arrive whole before the close (py/shutdown_replies.py); a
# client that never reads them does not hold the server up longer than 5 s.
source "$(dirname "$0")/lib/common.bash"
need qemu-img fio
need_python_nbd
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio has no nbd engine"

image_end() { qemu-img check -f qcow2 "$1" 2>/dev/null | sed -n 's/^Image end offset: //p'; }

n=0
for sig in TERM INT TERM; do
    n=$((n + 1))
    img=$T/s$n.qcow2 st=$T/state$n
    mkdir "$st"
    if ((n == 3)); then mkimg "$img" 256M -o cluster_size=4096; else mkimg "$img" 256M; fi
    start_server s$n -t -e 0 "$img"
    "$PYTHON" "$PY_DIR/crashwriter.py" write "$(uri s$n)" "$st" 8 >"$T/writer$n.log" 2>&1 &
    writer=$!
    track_pid "$writer"
    (cd "$T" && exec fio --ioengine=nbd --uri="$(uri s$n)" --name=load --numjobs=4 --thread \
        --offset=64M --size=32M --offset_increment=32M --bs=16k --iodepth=16 --rw=randrw \
        --fsync=64 --time_based --runtime=600 >"$T/fio$n.log" 2>&1) &
    fio_pid=$!
    track_pid "$fio_pid"
    for ((i = 0; i < 600; i++)); do [[ -e $st/ready ]] && break; sleep 0.05; done
    [[ -e $st/ready ]] || { cat "$T/writer$n.log" >&2; fail "writers did not start"; }
    sleep 1.5
    say "SIG$sig with 12 connections writing"
    kill -"$sig" "${SRV_PID[s$n]}"
    wait_server_exit s$n 30 0
    wait "$writer" || { cat "$T/writer$n.log" >&2; fail "the writers failed"; }
    cat "$T/writer$n.log"
    wait "$fio_pid" 2>/dev/null
    grep -q "not taken" "${SRV_LOG[s$n]}" && fail "replies were cut off at the shutdown"
    grep -q "signal .* received; shutting down" "${SRV_LOG[s$n]}" || fail "no log line for SIG$sig"
    img_check "$img"
    qemu-img info --output=json "$img" | grep -q '"dirty-flag": false' ||
        fail "the dirty bit is still set after SIG$sig: $(qemu-img info "$img")"
    size=$(stat -c %s "$img") end=$(image_end "$img")
    [[ -n $end ]] && ((size <= end)) || fail "$img is $size bytes, past its end at ${end:-?}: reserved tail left"
    start_server v$n -t -r "$img"
    "$PYTHON" "$PY_DIR/crashwriter.py" verify "$(uri v$n)" "$st" acked || fail "acknowledged writes lost after SIG$sig"
    stop_server v$n
done

mkimg "$T/r.qcow2" 64M
start_server w -t -e 0 "$T/r.qcow2"
py shutdown_replies.py "$(uri w)" "${SRV_PID[w]}" whole
wait_server_exit w 20 0
start_server k -t -e 0 "$T/r.qcow2"
"$PYTHON" "$PY_DIR/shutdown_replies.py" "$(uri k)" "${SRV_PID[k]}" stuck >"$T/stuck.log" 2>&1 &
track_pid $!
start=$SECONDS
wait_server_exit k 20 0
say "with a client not reading its replies the server exited $((SECONDS - start)) s after starting to wait"
grep -q "replies not taken within 5 s" "${SRV_LOG[k]}" || fail "no log line for the replies not taken"
img_check "$T/r.qcow2"
finish
