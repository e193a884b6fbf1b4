#!/bin/bash
# Command line: -V, --help, options refused by name, bad values, missing/nonexistent image,
# raw files (need -f raw; the error says so), -k unix socket, -x/-D, --pid-file, --fork,
# -o offset, -s snapshot (image unchanged, overlay not left behind), a port already in use,
# -c/-d with a missing device, -v request logging, -b ::1 / 0.0.0.0, -s on raw files,
# --handshake-timeout 0 (refused, or no limit; never "drop every client").
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io nbdinfo
need_python_nbd

# expect_refusal WHAT PATTERN ARGS...: qnbd ARGS exits non-zero quickly, stderr matches PATTERN.
expect_refusal() {
    local what=$1 pat=$2 rc; shift 2
    run_t 20 "$QNBD" "$@" >"$T/out" 2>"$T/err"; rc=$?
    ((rc != 0 && rc != 124 && rc != 137)) || { cat "$T/out" "$T/err" >&2; fail "$what: exit $rc, expected a quick failure"; }
    grep -qiE -- "$pat" "$T/err" || { cat "$T/err" >&2; fail "$what: stderr does not match '$pat'"; }
    check_log_clean "$T/err"
    say "ok: $what -> exit $rc: $(head -n 2 "$T/err" | tr '\n' ' ')"
}

mkimg "$T/a.qcow2" 64M

# -V and --help.
out=$("$QNBD" -V) || fail "qnbd -V failed"
grep -qE '^qnbd [0-9]+\.[0-9]+' <<<"$out" || fail "qnbd -V printed '$out'"
out=$("$QNBD" --version) || fail "qnbd --version failed"
out=$("$QNBD" --help 2>&1) || fail "qnbd --help failed"
for opt in --port --bind --socket --export-name --read-only --persistent --shared --format \
    --snapshot --fork --pid-file --discard --detect-zeroes --allocation-depth --handshake-timeout; do
    grep -q -- "$opt" <<<"$out" || fail "--help does not mention $opt"
done
"$QNBD" -h >/dev/null 2>&1 || fail "qnbd -h failed"
out=$("$QNBD" create --help 2>&1) || fail "qnbd create --help failed"

# Options refused by name.
expect_refusal "-B of a missing bitmap" "Bitmap 'bm' is not found" -B bm "$T/a.qcow2"
expect_refusal "-L" "not supported" -L "$T/a.qcow2"
expect_refusal "--object" "object.*not supported" --object secret,id=s0,data=x "$T/a.qcow2"
expect_refusal "--tls-creds without its object" "no tls-creds object" --tls-creds tls0 "$T/a.qcow2"
expect_refusal "--tls-authz without --tls-creds" "tls-authz needs --tls-creds" --tls-authz a0 "$T/a.qcow2"
expect_refusal "--tls-hostname" "tls-hostname.*not supported" --tls-hostname h "$T/a.qcow2"
expect_refusal "-T" "not supported" -T "nbd_*" "$T/a.qcow2"
expect_refusal "--selinux-label" "selinux.*not supported" --selinux-label l "$T/a.qcow2"
expect_refusal "-l" "snapshot.*not supported|-l.*not supported" -l snap1 "$T/a.qcow2"
expect_refusal "--image-opts" "image-opts.*not supported" --image-opts "driver=qcow2,file.filename=$T/a.qcow2"

# A refused option wins over --help and --version: capability probes must fail.
expect_refusal "-l with --version" "snapshot.*not supported" -l snap1 --version
expect_refusal "--help with -l" "snapshot.*not supported" --help -l snap1
expect_refusal "--tls-hostname=... with -V" "tls-hostname.*not supported" -V --tls-hostname=h

# qemu-nbd's style: one line naming the option and the value, exit status 1.
run_t 10 "$QNBD" -p 99999 "$T/a.qcow2" 2>"$T/err"; rc=$?
[[ $rc == 1 ]] || fail "-p 99999 exited with $rc, expected 1"
grep -q "port: invalid value '99999' (a number from 0 to 65535)" "$T/err" || fail "-p 99999: $(cat "$T/err")"
run_t 10 "$QNBD" --bogus "$T/a.qcow2" 2>"$T/err"; rc=$?
[[ $rc == 1 ]] || fail "--bogus exited with $rc, expected 1"
grep -q "Try 'qnbd --help'" "$T/err" || fail "--bogus: $(cat "$T/err")"
out=$("$QNBD" --help)
for want in "default writeback" "off|on" "default 10809" "default ignore"; do
    grep -qF -- "$want" <<<"$out" || fail "--help does not state '$want'"
done

# Bad values and usage errors.
expect_refusal "unknown option" "bogus" --bogus "$T/a.qcow2"
expect_refusal "no image" "image" -t
expect_refusal "--cache=bogus" "cache|bogus" --cache=bogus "$T/a.qcow2"
expect_refusal "-f vmdk" "format|vmdk" -f vmdk "$T/a.qcow2"
expect_refusal "--discard=bogus" "discard|bogus" --discard=bogus "$T/a.qcow2"
expect_refusal "--detect-zeroes=bogus" "detect|bogus" --detect-zeroes=bogus "$T/a.qcow2"
expect_refusal "-p notaport" "port|notaport" -p notaport "$T/a.qcow2"
expect_refusal "nonexistent image" "no-such-file" -p 1 "$T/no-such-file.qcow2"
expect_refusal "-b bad address" "bind|address" -b 300.1.1.1 -p 1 "$T/a.qcow2"
expect_refusal "-o beyond the end" "offset|beyond" -o $((65 << 20)) -p 1 "$T/a.qcow2"

# Raw files: refused without -f raw (the message says so), served with it.
"$PYTHON" -c "import sys; sys.stdout.buffer.write(bytes(range(256)) * 32768)" >"$T/disk.raw"
cp "$T/disk.raw" "$T/disk.raw.orig"
expect_refusal "raw file without -f raw" "-f raw" -p 1 "$T/disk.raw"
cmp "$T/disk.raw" "$T/disk.raw.orig" || fail "refusing a raw file changed it"
expect_refusal "raw file with -f qcow2" "-f raw|qcow2" -f qcow2 -p 1 "$T/disk.raw"
start_server raw -t -f raw -e 0 "$T/disk.raw"
"$PYTHON" - "$(uri raw)" <<'PY' || fail "serving a raw file"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.get_size() == 8 << 20, h.get_size()
assert h.pread(512, 256) == bytes(range(256)) * 2
h.pwrite(b"\xee" * 4096, 4096)
h.flush()
h.shutdown()
PY
stop_server raw
cmp -n 4096 "$T/disk.raw" "$T/disk.raw.orig" || fail "raw: data before the write changed"
[[ $(od -An -tx1 -j 4096 -N 1 "$T/disk.raw" | tr -d ' ') == ee ]] || fail "raw: write not in the file"
[[ $(stat -c %s "$T/disk.raw") == $((8 << 20)) ]] || fail "raw: file size changed"

# -k unix socket, -x, -D; the socket file goes away with the server.
start_server unix -t -k "$T/nbd.sock" -x unixexp -D "over a unix socket" "$T/a.qcow2"
[[ -S $T/nbd.sock ]] || fail "-k did not create a socket"
out=$(run_t 30 nbdinfo --list "nbd+unix:///?socket=$T/nbd.sock") || fail "nbdinfo --list over -k failed"
grep -q 'export="unixexp"' <<<"$out" || fail "-x not visible over the unix socket: $out"
grep -q "description: over a unix socket" <<<"$out" || fail "-D not visible: $out"
out=$(run_t 30 nbdinfo --size "$(uri unix unixexp)") || fail "nbdinfo over the unix socket failed"
[[ $out == $((64 << 20)) ]] || fail "size over the unix socket: $out"
stop_server unix
[[ -e $T/nbd.sock ]] && fail "unix socket left behind after exit"

# --pid-file: holds the server's pid while it runs, removed at exit.
start_server pidf -t --pid-file "$T/qnbd.pid" "$T/a.qcow2"
[[ $(cat "$T/qnbd.pid" 2>/dev/null) == "${SRV_PID[pidf]}" ]] || fail "--pid-file holds '$(cat "$T/qnbd.pid" 2>/dev/null)', expected ${SRV_PID[pidf]}"
stop_server pidf
[[ -e $T/qnbd.pid ]] && fail "--pid-file not removed at exit"

# --fork: returns once listening; the daemon keeps serving in its own session.
port=$(free_port)
run_t 30 "$QNBD" --fork -t -p "$port" --pid-file "$T/fork.pid" "$T/a.qcow2" >"$T/fork.log" 2>&1 ||
    { cat "$T/fork.log" >&2; fail "qnbd --fork failed"; }
fpid=$(cat "$T/fork.pid" 2>/dev/null) || fail "--fork: no pid file"
track_pid "$fpid"
alive "$fpid" || fail "--fork: daemon $fpid not running"
[[ $(ps -o sid= -p "$fpid" | tr -d ' ') == "$fpid" ]] || fail "--fork: daemon is not a session leader"
out=$(run_t 30 nbdinfo --size "nbd://127.0.0.1:$port/") || fail "--fork: daemon does not serve"
[[ $out == $((64 << 20)) ]] || fail "--fork: size $out"
out=$(run_t 30 nbdinfo --size "nbd://127.0.0.1:$port/") || fail "--fork: daemon stopped after one client despite -t"
kill -TERM "$fpid"
for ((i = 0; i < 200; i++)); do alive "$fpid" || break; sleep 0.05; done
alive "$fpid" && fail "--fork: daemon ignores SIGTERM"
[[ -e $T/fork.pid ]] && fail "--fork: pid file left behind"
check_log_clean "$T/fork.log"
img_check "$T/a.qcow2"
# --fork when the server cannot start: the parent reports failure.
run_t 30 "$QNBD" --fork -p "$port" "$T/no-such-file.qcow2" >"$T/fork2.log" 2>&1 &&
    fail "--fork with a missing image exited 0"

# -c/-d with a device that does not exist: a clear error, nonzero, image untouched.
cp "$T/a.qcow2" "$T/a.before"
expect_refusal "-c with a missing device" "$T/nodev" -c "$T/nodev" "$T/a.qcow2"
cmp "$T/a.qcow2" "$T/a.before" || fail "-c with a missing device changed the image"
expect_refusal "-d with a missing device" "$T/nodev" -d "$T/nodev"

# -v logs every request.
start_server verbose -t -v "$T/a.qcow2"
"$PYTHON" - "$(uri verbose)" <<'PY' || fail "client of the -v server"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pread(4096, 12288)
h.pwrite(b"v" * 512, 1 << 20)
h.flush()
h.shutdown()
PY
stop_server verbose
for want in "READ offset=12288 length=4096" "WRITE offset=1048576 length=512" "FLUSH"; do
    grep -q "$want" "${SRV_LOG[verbose]}" || fail "-v does not log '$want'"
done

# A port already in use (by a server of another image: this one is locked by the first).
start_server busy -t "$T/a.qcow2"
mkimg "$T/other.qcow2" 16M
expect_refusal "port in use" "listen|in use" -p "${SRV_PORT[busy]}" "$T/other.qcow2"
stop_server busy

# -b: IPv6 loopback and all IPv4 interfaces.
if [[ -s /proc/net/if_inet6 ]]; then
    start_server v6 -t -b ::1 "$T/a.qcow2"
    grep -q "listening on \[::1\]" "${SRV_LOG[v6]}" || fail "-b ::1: no listening log line"
    out=$(run_t 30 nbdinfo --size "nbd://[::1]:${SRV_PORT[v6]}/") || fail "-b ::1: nbdinfo failed"
    [[ $out == $((64 << 20)) ]] || fail "-b ::1: size $out"
    stop_server v6
fi
start_server any -t -b 0.0.0.0 "$T/a.qcow2"
out=$(run_t 30 nbdinfo --size "$(uri any)") || fail "-b 0.0.0.0: nbdinfo failed"
stop_server any

# -o offset: the export starts that far into the image.
mkimg "$T/off.qcow2" 64M
qemu-io -f qcow2 -c "write -P 0x44 1M 64K" -c "write -P 0x45 0 1M" "$T/off.qcow2" >/dev/null || fail "qemu-io"
start_server off -t -e 0 -o 1048576 "$T/off.qcow2"
"$PYTHON" - "$(uri off)" <<'PY' || fail "-o 1048576"
import sys, nbd
M = 1 << 20
h = nbd.NBD(); h.add_meta_context("base:allocation"); h.connect_uri(sys.argv[1])
assert h.get_size() == 63 * M, h.get_size()
assert h.pread(65536, 0) == b"\x44" * 65536
assert h.pread(4096, 65536) == bytes(4096)
h.pwrite(b"\x55" * 4096, 128 << 10)
h.pwrite(b"\x56" * 4096, 63 * M - 4096)
ext = []
h.block_status(2 * 65536, 0, lambda m, o, e, err: ext.extend(e) or 0)
assert ext[1] == 0 and ext[0] == 65536, ext   # data first, then not-data, as seen from the offset
h.shutdown()
PY
stop_server off
out=$(qemu-io -f qcow2 -r -c "read -P 0x55 1179648 4096" -c "read -P 0x56 67104768 4096" \
    -c "read -P 0x45 0 1M" "$T/off.qcow2" 2>&1)
grep -qiE "fail|error" <<<"$out" && fail "-o: writes landed in the wrong place: $out"
img_check "$T/off.qcow2"
# An unaligned offset.
start_server off2 -t -r -o 1000 "$T/off.qcow2"
"$PYTHON" - "$(uri off2)" <<'PY' || fail "-o 1000"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.get_size() == (64 << 20) - 1000
assert h.pread(2000, (1 << 20) - 2000) == b"\x45" * 1000 + b"\x44" * 1000
h.shutdown()
PY
stop_server off2

# -s snapshot: writes are visible to the client, the image is untouched, nothing left in TMPDIR.
mkimg "$T/snap.qcow2" 64M
qemu-io -f qcow2 -c "write -P 0x61 0 2M" "$T/snap.qcow2" >/dev/null || fail "qemu-io"
cp "$T/snap.qcow2" "$T/snap.orig"
start_server snap -t -s -e 0 "$T/snap.qcow2"
"$PYTHON" - "$(uri snap)" <<'PY' || fail "-s snapshot"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert not h.is_read_only()
assert h.pread(4096, 0) == b"\x61" * 4096
h.pwrite(b"\x62" * (1 << 20), 512 << 10)
h.zero(1 << 20, 4 << 20)
h.trim(1 << 20, 1 << 20)
h.flush()
assert h.pread(4096, 512 << 10) == b"\x62" * 4096
h2 = nbd.NBD(); h2.connect_uri(sys.argv[1])
assert h2.pread(4096, 600 << 10) == b"\x62" * 4096   # shared overlay across connections
h2.shutdown()
h.shutdown()
PY
stop_server snap
cmp "$T/snap.qcow2" "$T/snap.orig" || fail "-s: the image changed"
left=$(find "$T" -name 'qnbd-snapshot-*')
[[ -z $left ]] || fail "-s: overlay left behind: $left"
# -s on a raw file.
cp "$T/disk.raw" "$T/disk.raw.snap"
start_server snapraw -t -s -f raw "$T/disk.raw"
"$PYTHON" - "$(uri snapraw)" <<'PY' || fail "-s -f raw"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.get_size() == 8 << 20
h.pwrite(b"s" * 65536, 100)
h.zero(1 << 20, 2 << 20)
assert h.pread(8, 100) == b"s" * 8 and h.pread(8, 2 << 20) == bytes(8)
h.shutdown()
PY
stop_server snapraw
cmp "$T/disk.raw" "$T/disk.raw.snap" || fail "-s -f raw: the raw file changed"

# --handshake-timeout 0: refused at startup, or "no limit" (as qemu-nbd's --handshake-limit 0);
# never a server that drops every client.
port=$(free_port)
"$QNBD" -t --handshake-timeout 0 -p "$port" "$T/a.qcow2" >"$T/ht0.log" 2>&1 &
ht0=$!
track_pid "$ht0"
for ((i = 0; i < 200; i++)); do
    grep -q "listening on" "$T/ht0.log" && break
    alive "$ht0" || break
    sleep 0.05
done
if alive "$ht0"; then
    out=$(run_t 30 nbdinfo --size "nbd://127.0.0.1:$port/" 2>&1) ||
        { cat "$T/ht0.log" >&2; fail "--handshake-timeout 0 is accepted but every client is dropped: $out"; }
    kill -TERM "$ht0"
    wait "$ht0"
else
    wait "$ht0"; rc=$?
    ((rc != 0)) || fail "--handshake-timeout 0: server exited 0 at startup"
    grep -qi "handshake" "$T/ht0.log" || fail "--handshake-timeout 0 refused without a clear message"
fi
finish
