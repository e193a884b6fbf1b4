#!/bin/bash
# --fork as qemu-nbd does it: the command returns once the export is ready, with nothing of the
# caller's (stdin, stdout, stderr) left open in the daemon, the pid file already written, and a
# non-zero status when startup fails. Under a service manager: READY=1 with a status line once
# listening, STOPPING=1 at shutdown (NOTIFY_SOCKET), and journal-style log lines ("<6>message",
# no timestamp) when stderr is the journal (JOURNAL_STREAM).
source "$(dirname "$0")/lib/common.bash"
need qemu-img nbdinfo

mkimg "$T/a.qcow2" 64M

# $(...) returns: the daemon holds none of the pipe's ends.
port=$(free_port)
start=$SECONDS
out=$(run_t 20 "$QNBD" --fork --pid-file "$T/q.pid" -t -p "$port" "$T/a.qcow2" 2>&1) ||
    fail "qnbd --fork failed: $out"
((SECONDS - start <= 5)) || fail "qnbd --fork took $((SECONDS - start)) s to return"
[[ -s $T/q.pid ]] || fail "--pid-file not written before the parent exited"
pid=$(cat "$T/q.pid")
track_pid "$pid"
alive "$pid" || fail "the daemon ($pid) is not running"
for fd in 0 1 2; do
    [[ $(readlink "/proc/$pid/fd/$fd") == /dev/null ]] ||
        fail "daemon fd $fd is $(readlink "/proc/$pid/fd/$fd"), not /dev/null"
done
run_t 20 nbdinfo "nbd://127.0.0.1:$port/" >/dev/null || fail "nbdinfo against the daemon"
kill -TERM "$pid"
for ((i = 0; i < 200; i++)); do alive "$pid" || break; sleep 0.05; done
alive "$pid" && fail "the daemon did not exit on SIGTERM"
[[ -e $T/q.pid ]] && fail "the pid file was left behind"
img_check "$T/a.qcow2"
say "ok: --fork returns at once, detaches stdio, writes the pid file first"

# Startup failures reach the caller: status 1 and the reason on stderr.
run_t 20 "$QNBD" --fork -p "$(free_port)" "$T/missing.qcow2" 2>"$T/err" && fail "--fork with a missing image succeeded"
grep -q "missing.qcow2" "$T/err" || fail "--fork failure does not name the image: $(cat "$T/err")"
run_t 20 "$QNBD" --fork --pid-file "$T/no/such/dir/q.pid" -p "$(free_port)" "$T/a.qcow2" 2>"$T/err" &&
    fail "--fork with an unwritable pid file succeeded"
grep -q "pid file" "$T/err" || fail "unwritable pid file not reported: $(cat "$T/err")"
say "ok: --fork startup failures exit 1 with the reason"

# sd_notify: READY=1 with a status line once listening, STOPPING=1 on SIGTERM.
"$PYTHON" - "$QNBD" "$T/a.qcow2" "$(free_port)" "$T" <<'PY' || fail "sd_notify protocol"
import os, signal, socket, subprocess, sys
qnbd, image, port, tmp = sys.argv[1:]
path = os.path.join(tmp, "notify.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(20)
env = dict(os.environ, NOTIFY_SOCKET=path)
p = subprocess.Popen([qnbd, "-t", "-p", port, image], env=env, stderr=subprocess.DEVNULL)
ready = s.recv(4096).decode()
assert "READY=1" in ready and "STATUS=serving 127.0.0.1:" + port in ready, ready
p.send_signal(signal.SIGTERM)
stopping = s.recv(4096).decode()
assert "STOPPING=1" in stopping, stopping
assert p.wait(20) == 0
print("  notify:", ready.replace("\n", " "), "|", stopping.replace("\n", " "))
PY
say "ok: READY=1, STATUS= and STOPPING=1"

# Journal stream: JOURNAL_STREAM names stderr, so lines carry a priority and no timestamp.
port=$(free_port)
: >"$T/journal.log"
dev_ino=$(stat -c '%d:%i' "$T/journal.log")
JOURNAL_STREAM=$dev_ino "$QNBD" -p "$port" "$T/a.qcow2" 2>>"$T/journal.log" &
jpid=$!
track_pid "$jpid"
for ((i = 0; i < 200; i++)); do grep -q "^<6>listening on" "$T/journal.log" && break; sleep 0.05; done
grep -q "^<6>listening on 127.0.0.1:$port" "$T/journal.log" || fail "no journal-style line: $(cat "$T/journal.log")"
kill -TERM "$jpid"
wait "$jpid" || fail "qnbd under JOURNAL_STREAM exited with $?"
grep -qvE "^<[0-7]>" "$T/journal.log" && fail "a line without a priority: $(grep -vE '^<[0-7]>' "$T/journal.log" | head -1)"
grep -qE "^<[0-7]>[0-9]{4}-" "$T/journal.log" && fail "journal lines carry a timestamp"
say "ok: journal lines: $(grep -m1 '^<6>' "$T/journal.log")"
finish
