#!/bin/bash
# Crash consistency: the server is SIGKILLed while a client writes with many requests in flight
# (plain and lazy_refcounts images). The image must not be corrupt (qemu-img check: no errors;
# leaked clusters are acceptable after a crash), flushed data must be intact, qnbd must serve it
# again, and after a clean shutdown the image is fully clean (a lazy-refcounts image has its
# refcounts rebuilt, so no leaks either) and the file ends at its last used cluster (the tail
# reserved before the crash is cut at the next clean close).
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
finish
