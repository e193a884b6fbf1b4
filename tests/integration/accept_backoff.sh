#!/bin/bash
# Accept failures back off. With qnbd out of descriptors (soft ulimit -n 40) and more clients
# waiting in the listen backlog, every accept fails with EMFILE while the listening socket stays
# readable. The server must wait between attempts: little CPU time over 2 s and one warning,
# not one per attempt. Once descriptors are available again it must accept within about the
# longest wait (1 s), log the end of the episode with its count, and serve a new client.
#
# Descriptors come back by raising the limit before the idle clients close: a sanitizer build
# cannot survive connections ending while no descriptor is free (UBSan's vptr check opens a
# pipe to probe memory, and reports a false "invalid vptr" when that fails).
source "$(dirname "$0")/lib/common.bash"
need_python_nbd

mkimg "$T/a.qcow2" 16M

# qnbd under a low descriptor limit; the wrapper execs it, so start_server records qnbd's pid.
real_qnbd=$QNBD
cat >"$T/lowfd" <<EOF
#!/bin/bash
ulimit -S -n 40 || exit 1
exec "$real_qnbd" "\$@"
EOF
chmod +x "$T/lowfd"
QNBD=$T/lowfd start_server lowfd -t -e 0 --handshake-timeout 0 "$T/a.qcow2"
pid=${SRV_PID[lowfd]}
log=${SRV_LOG[lowfd]}
check "the server runs with 40 descriptors" grep -q "^Max open files *40 " "/proc/$pid/limits"

# Idle clients, more than the server has descriptors for; held open until $T/release exists.
"$PYTHON" - "${SRV_PORT[lowfd]}" "$T/held" "$T/release" <<'PY' &
import os, socket, sys, time
port, held, release = int(sys.argv[1]), sys.argv[2], sys.argv[3]
socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(80)]
open(held, "w").close()
while not os.path.exists(release):
    time.sleep(0.05)
for s in socks:
    s.close()
PY
holder=$!
track_pid "$holder"
for ((i = 0; i < 200; i++)); do
    [[ -e $T/held ]] && grep -q "accept failed" "$log" && break
    sleep 0.05
done
[[ -e $T/held ]] || fail "the idle clients did not connect"
grep -q "accept failed" "$log" || fail "the server never ran out of descriptors (no accept failure)"
check_alive lowfd "out of descriptors"

# CPU time (utime + stime, in clock ticks) of the server over 2 s while accept keeps failing.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat"; }
sleep 1
before=$(cpu_ticks)
warnings_before=$(grep -c "accept failed" "$log")
sleep 2
after=$(cpu_ticks)
warnings=$(($(grep -c "accept failed" "$log") - warnings_before))
cpu_ms=$(((after - before) * 1000 / $(getconf CLK_TCK)))
say "out of descriptors for 2 s: ${cpu_ms} ms of CPU, $warnings more accept warnings"
((cpu_ms < 500)) || fail "the server used ${cpu_ms} ms of CPU in 2 s with accept failing (spinning)"
((warnings <= 2)) || fail "$warnings accept warnings logged in 2 s (one per attempt?)"

# Descriptors available again: the queued clients are accepted and the episode's end is logged
# with its count, within the longest wait; then the idle clients leave and a new one is served.
"$PYTHON" -c 'import resource, sys
pid = int(sys.argv[1])
soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
resource.prlimit(pid, resource.RLIMIT_NOFILE, (min(hard, 1024), hard))' "$pid" ||
    fail "cannot raise the server's descriptor limit"
ended='accept failed [0-9]+ times in [0-9]+ ms \(last: .*\); accepting again'
for ((i = 0; i < 40; i++)); do
    grep -qE "$ended" "$log" && break
    sleep 0.05
done
grep -qE "$ended" "$log" || fail "no accept within 2 s of descriptors being available, or no count logged"
say "$(grep -oE "$ended" "$log" | head -1)"
touch "$T/release"
wait "$holder" || fail "the idle clients' holder failed"
run_t 30 "$PYTHON" - "$(uri lowfd)" <<'PY' || fail "no new client served after the idle ones left"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.pread(4096, 0) == bytes(4096)
h.shutdown()
PY
check_alive lowfd "after the accept failures"
finish
