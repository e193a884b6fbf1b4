#!/bin/bash
# Crash consistency: the server is SIGKILLed while a client writes with many requests in flight
# (plain and lazy_refcounts images). The image must not be corrupt (qemu-img check: no errors;
# leaked clusters are acceptable after a crash), flushed data must be intact, qnbd must serve it
# again, and after a clean shutdown the image is fully clean (a lazy-refcounts image has its
# refcounts rebuilt, so no leaks either) and the file ends at its last used cluster (the tail
# reserved before the crash is cut at the next clean close).
# Then ten kill -9 moments on one image while 8 connections write with 16 requests in flight and
# a FLUSH every 32 writes (py/crashwriter.py): after each, qemu-img check finds no corruption and
# every write acknowledged before a completed FLUSH reads back when qnbd serves the image again;
# the final clean close leaves no leaks and no reserved tail.
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io
need_python_nbd

# check_not_corrupt IMAGE [ALLOW_LEAKS]: qemu-img check exit 0, or 3 (leaks only) when allowed.
check_not_corrupt() {
    local out rc
    out=$(qemu-img check -f qcow2 "$1" 2>&1); rc=$?
    echo "$out" | sed 's/^/    /'
    [[ $rc == 0 || ($rc == 3 && ${2:-0} == 1) ]] || fail "qemu-img check $1: exit $rc"
    grep -qiE "^ERROR|corrupt" <<<"$out" && fail "qemu-img check $1 reports corruption"
    return 0
}

# image_end IMAGE: qemu-img check's "Image end offset".
image_end() {
    qemu-img check -f qcow2 "$1" 2>/dev/null | sed -n 's/^Image end offset: //p'
}

verify_77() {
    local out
    out=$(qemu-io -f qcow2 -r -c "read -P 0x77 0 4M" "$1" 2>&1)
    grep -qiE "fail|error" <<<"$out" && fail "$1: flushed data lost: $out"
    return 0
}

n=0
for opts in "" "lazy_refcounts=on" "cluster_size=4096"; do
    n=$((n + 1))
    img=$T/c$n.qcow2
    if [[ -n $opts ]]; then mkimg "$img" 64M -o "$opts"; else mkimg "$img" 64M; fi
    start_server k$n -t -e 0 "$img"
    "$PYTHON" "$PY_DIR/busy.py" "$(uri k$n)" "$T/ready$n" >"$T/busy$n.log" 2>&1 &
    busy=$!
    track_pid "$busy"
    for ((i = 0; i < 400; i++)); do [[ -e $T/ready$n ]] && break; sleep 0.05; done
    [[ -e $T/ready$n ]] || { cat "$T/busy$n.log" >&2; fail "busy client did not start"; }
    sleep 1
    kill -KILL "${SRV_PID[k$n]}"
    wait_server_exit k$n 10 137
    wait "$busy" 2>/dev/null
    say "after SIGKILL ($opts):"
    check_not_corrupt "$img" 1
    verify_77 "$img"
    say "file after SIGKILL: $(stat -c %s "$img") bytes, image end $(image_end "$img")"

    # Served again: data intact, writable, then a clean shutdown.
    start_server r$n -t -e 0 "$img"
    "$PYTHON" - "$(uri r$n)" <<'PY' || fail "serving the image again after the crash"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.pread(4 << 20, 0) == b"\x77" * (4 << 20), "flushed data lost"
h.pwrite(b"\x78" * (1 << 20), 50 << 20)
h.zero(1 << 20, 20 << 20)
h.flush()
assert h.pread(1 << 20, 50 << 20) == b"\x78" * (1 << 20)
h.shutdown()
PY
    stop_server r$n
    say "after a clean restart ($opts):"
    if [[ $opts == lazy_refcounts=on ]]; then check_not_corrupt "$img" 0; else check_not_corrupt "$img" 1; fi
    verify_77 "$img"
    size=$(stat -c %s "$img") end=$(image_end "$img")
    [[ -n $end ]] && ((size <= end)) ||
        fail "$img is $size bytes, past its last used cluster at ${end:-?}: tail not trimmed"
done

# kill_moment IMAGE NAME STATE_DIR SECONDS EPOCH: writers on a fresh server, SIGKILL SECONDS
# after every connection completed a FLUSH, then qemu-img check.
kill_moment() {
    local img=$1 name=$2 st=$3 secs=$4 epoch=$5 writer i
    mkdir -p "$st"
    "$PYTHON" "$PY_DIR/crashwriter.py" write "$(uri "$name")" "$st" 8 3600 "$epoch" >"$st.log" 2>&1 &
    writer=$!
    track_pid "$writer"
    for ((i = 0; i < 600; i++)); do [[ -e $st/ready ]] && break; sleep 0.05; done
    [[ -e $st/ready ]] || { cat "$st.log" >&2; fail "writers did not start"; }
    sleep "$secs"
    kill -KILL "${SRV_PID[$name]}"
    wait_server_exit "$name" 10 137
    wait "$writer" || { cat "$st.log" >&2; fail "the writers failed"; }
    sed 's/^/    /' "$st.log"
    check_not_corrupt "$img" 1 >/dev/null
}

img=$T/m.qcow2
mkimg "$img" 64M
moments=(0.2 1.7 0.5 1.1 0.05 2.3 0.8 1.4 0.3 0.9)
prev=""
for ((m = 0; m < ${#moments[@]}; m++)); do
    start_server m$m -t -e 0 "$img"
    if [[ -n $prev ]]; then
        "$PYTHON" "$PY_DIR/crashwriter.py" verify "$(uri m$m)" "$prev" durable ||
            fail "flushed writes lost at kill moment $m"
    fi
    say "kill -9 moment $m: ${moments[m]} s after the first flushes"
    kill_moment "$img" m$m "$T/m$m" "${moments[m]}" $((m + 1))
    prev=$T/m$m
done
start_server mz -t -e 0 "$img"
"$PYTHON" "$PY_DIR/crashwriter.py" verify "$(uri mz)" "$prev" durable || fail "flushed writes lost at the last kill"
stop_server mz
say "after ten kills and a clean close:"
check_not_corrupt "$img" 0
size=$(stat -c %s "$img") end=$(image_end "$img")
[[ -n $end ]] && ((size <= end)) || fail "$img is $size bytes, past its last used cluster at ${end:-?}"
finish
