#!/bin/bash
# -c auto, --reconnect-timeout and --ioctl on the command line: documented in --help, refused
# where they do not go together, and, on a host without the nbd module (no netlink family),
# failing at once with exit status 1, nothing on stdout and a message that says to load it.
# The kernel side runs in the e2e tests (scripts/e2e/tests/qnbd-netlink-auto, qnbd-reconnect).
source "$(dirname "$0")/lib/common.bash"

# expect_refusal WHAT PATTERN ARGS...: qnbd ARGS exits 1 quickly, prints nothing on stdout and
# its stderr matches PATTERN.
expect_refusal() {
    local what=$1 pat=$2 rc; shift 2
    run_t 20 "$QNBD" "$@" >"$T/out" 2>"$T/err"; rc=$?
    ((rc == 1)) || { cat "$T/out" "$T/err" >&2; fail "$what: exit $rc, expected 1"; }
    [[ ! -s $T/out ]] || { cat "$T/out" >&2; fail "$what: printed on stdout"; }
    grep -qiE -- "$pat" "$T/err" || { cat "$T/err" >&2; fail "$what: stderr does not match '$pat'"; }
    check_log_clean "$T/err"
    say "ok: $what: $(head -n 1 "$T/err")"
}

mkimg "$T/a.qcow2" 64M
out=$("$QNBD" --help 2>&1) || fail "qnbd --help failed"
for word in --reconnect-timeout --ioctl "'auto'"; do
    grep -q -- "$word" <<<"$out" || fail "--help does not mention $word"
done

expect_refusal "-c auto --ioctl" "netlink.*--ioctl" -c auto --ioctl "$T/a.qcow2"
expect_refusal "--reconnect-timeout --ioctl" "netlink.*--ioctl" -c /dev/nbd0 --ioctl \
    --reconnect-timeout 5 "$T/a.qcow2"
expect_refusal "--reconnect-timeout without -c" "needs -c" --reconnect-timeout 5 "$T/a.qcow2"
expect_refusal "--ioctl without -c" "needs -c" --ioctl "$T/a.qcow2"
expect_refusal "--reconnect-timeout with -s" "-s" -c /dev/nbd0 -s --reconnect-timeout 5 "$T/a.qcow2"
expect_refusal "--reconnect-timeout abc" "invalid value" -c /dev/nbd0 --reconnect-timeout abc "$T/a.qcow2"
expect_refusal "--reconnect-timeout -1" "invalid value" -c /dev/nbd0 --reconnect-timeout -1 "$T/a.qcow2"

if [[ -e /sys/module/nbd ]]; then
    say "the nbd module is loaded: the checks of a kernel without it are skipped"
else
    expect_refusal "-c auto without the nbd module" "netlink.*modprobe nbd" -c auto "$T/a.qcow2"
    expect_refusal "--reconnect-timeout without the nbd module" "netlink.*modprobe nbd" \
        -c /dev/nbd0 --reconnect-timeout 5 "$T/a.qcow2"
    expect_refusal "-c without the nbd module" "modprobe nbd" -c /dev/nbd0 "$T/a.qcow2"
    expect_refusal "-d without the nbd module" "modprobe nbd" -d /dev/nbd0
fi
# None of this touched the image.
qemu-img check -f qcow2 "$T/a.qcow2" >/dev/null 2>&1 || fail "the image is not clean"
finish
