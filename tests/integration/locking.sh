#!/bin/bash
# QEMU-compatible image locking against the real qemu tools: while qnbd serves an image
# writable, qemu-io, qemu-img, qemu-nbd and a second qnbd cannot write it (nor open it without
# -U); while qemu-io or qemu-nbd holds it, qnbd refuses it with a message naming the image;
# backing files are locked against writers; -r -U shares an image someone else writes.
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io qemu-nbd nbdinfo

# refused WHAT PATTERN CMD...: CMD fails within 20 s and its stderr matches PATTERN.
refused() {
    local what=$1 pat=$2 rc; shift 2
    run_t 20 "$@" >"$T/out" 2>"$T/err"; rc=$?
    ((rc != 0 && rc != 124 && rc != 137)) || { cat "$T/out" "$T/err" >&2; fail "$what: exit $rc, expected a refusal"; }
    grep -qE -- "$pat" "$T/err" "$T/out" || { cat "$T/out" "$T/err" >&2; fail "$what: output does not match '$pat'"; }
    check_log_clean "$T/err"
    say "ok: $what refused: $(head -n 1 "$T/err")"
}

# works WHAT CMD...: CMD succeeds within 20 s.
works() {
    local what=$1; shift
    run_t 20 "$@" >"$T/out" 2>&1 || { cat "$T/out" >&2; fail "$what failed"; }
    say "ok: $what"
}

mkimg "$T/a.qcow2" 64M
lockmsg='Failed to get "write" lock'
shared='Failed to get shared "write" lock'

# qnbd holds the image writable.
start_server w -t "$T/a.qcow2"
refused "qemu-io write" "$lockmsg" qemu-io -f qcow2 -c 'write 0 4k' "$T/a.qcow2"
refused "qemu-img info" "$shared" qemu-img info "$T/a.qcow2"
works "qemu-img info -U" qemu-img info -U "$T/a.qcow2"
refused "a second qnbd" "$lockmsg.*a\.qcow2|a\.qcow2.*$lockmsg" "$QNBD" -p "$(free_port)" "$T/a.qcow2"
refused "a second qnbd -r" "$shared" "$QNBD" -r -p "$(free_port)" "$T/a.qcow2"
refused "qemu-nbd" "lock" qemu-nbd -f qcow2 -p "$(free_port)" "$T/a.qcow2"
start_server ru -t -r -U "$T/a.qcow2"
works "nbdinfo through qnbd -r -U" nbdinfo "$(uri ru)"
stop_server ru
stop_server w
works "qemu-io write after qnbd exited" qemu-io -f qcow2 -c 'write 0 4k' "$T/a.qcow2"

# -U needs -r, as in qemu.
refused "qnbd -U without -r" "force-share=on can only be used with read-only images" \
    "$QNBD" -U -p "$(free_port)" "$T/a.qcow2"

# qemu-io holds the image writable.
qemu-io -f qcow2 -c 'sleep 600000' "$T/a.qcow2" >"$T/qemu-io.log" 2>&1 &
qio=$!
track_pid "$qio"
for ((i = 0; i < 100; i++)); do grep -q "OFDLCK.*$(stat -c %i "$T/a.qcow2")" /proc/locks && break; sleep 0.1; done
refused "qnbd while qemu-io writes" "$lockmsg.*a\.qcow2" "$QNBD" -p "$(free_port)" "$T/a.qcow2"
refused "qnbd -r while qemu-io writes" "$shared" "$QNBD" -r -p "$(free_port)" "$T/a.qcow2"
start_server shared -t -r -U "$T/a.qcow2"
works "nbdinfo through qnbd -r -U while qemu-io writes" nbdinfo "$(uri shared)"
stop_server shared
kill "$qio"; wait "$qio" 2>/dev/null

# qemu-nbd holds the image writable.
qemu-nbd -f qcow2 -t -p "$(free_port)" "$T/a.qcow2" >"$T/qemu-nbd.log" 2>&1 &
qnp=$!
track_pid "$qnp"
for ((i = 0; i < 100; i++)); do grep -q "OFDLCK.*$(stat -c %i "$T/a.qcow2")" /proc/locks && break; sleep 0.1; done
refused "qnbd while qemu-nbd serves" "$lockmsg" "$QNBD" -p "$(free_port)" "$T/a.qcow2"
kill "$qnp"; wait "$qnp" 2>/dev/null

# Backing files are locked against writers while an overlay is served.
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 "$T/b.qcow2" || fail "qemu-img create overlay"
start_server overlay -t "$T/b.qcow2"
refused "qemu-io writing the backing file" "$lockmsg" qemu-io -f qcow2 -c 'write 0 4k' "$T/a.qcow2"
works "qemu-img info -U of the backing file" qemu-img info -U "$T/a.qcow2"
stop_server overlay
img_check "$T/a.qcow2"
img_check "$T/b.qcow2"
finish
