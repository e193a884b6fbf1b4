#!/bin/bash
# What the log says: requests by name (WRITE, not "request type 1"), the export a client asked
# for when it does not exist (escaped: a name with a newline or an escape sequence cannot forge
# lines), no warning for a normal shutdown with a client connected, and the exit statistics
# only for a server that served; a client causing 10,000 refusals gets a bounded number of log
# lines (20, then one per 10 s) and the rest counted as suppressed.
source "$(dirname "$0")/lib/common.bash"
need qemu-img
need_python_nbd

mkimg "$T/a.qcow2" 16M

# A server no client ever reached: no statistics.
start_server idle "$T/a.qcow2"
stop_server idle
grep -q "flush requests" "${SRV_LOG[idle]}" && fail "statistics logged for a server that served nobody"

start_server s -t "$T/a.qcow2"
"$PYTHON" - "$(uri s)" <<'PY' || fail "client session"
import sys, nbd
uri = sys.argv[1]
# An unknown export whose name tries to forge a log line and to send a terminal escape.
bad = nbd.NBD()
bad.set_export_name("nosuch\n2026-01-01 00:00:00.000 qnbd[1] info: forged\x1b[31m")
host, port = uri.split("//")[1].rstrip("/").split(":")
try:
    bad.connect_tcp(host, port)
except nbd.Error:
    pass
else:
    raise SystemExit("an unknown export was served")
h = nbd.NBD()
h.set_strict_mode(0)  # let the server refuse what libnbd would refuse itself
h.connect_uri(uri)
h.pwrite(b"\x11" * 4096, 0)
try:
    h.pread(4096, 16 << 20)  # past the end
except nbd.Error:
    pass
else:
    raise SystemExit("a read past the end succeeded")
h.flush()
PY
grep -q "client asked for unknown export 'nosuch\\\\x0a2026" "${SRV_LOG[s]}" ||
    fail "the unknown export is not logged, escaped: $(grep -a unknown "${SRV_LOG[s]}")"
grep -q "forged" "${SRV_LOG[s]}" && ! grep -q "nosuch.*forged" "${SRV_LOG[s]}" && fail "a forged log line"
grep -qP "\x1b" "${SRV_LOG[s]}" && fail "an escape character reached the log"
grep -q "READ refused" "${SRV_LOG[s]}" || fail "a refused READ is not logged by name: $(grep refused "${SRV_LOG[s]}")"
grep -q "request type" "${SRV_LOG[s]}" && fail "a request is logged by number"

# SIGTERM with a client connected is a normal shutdown: no warnings.
"$PYTHON" - "$(uri s)" "$T/connected" <<'PY' &
import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
open(sys.argv[2], "w").close()
time.sleep(60)
PY
client=$!
track_pid "$client"
for ((i = 0; i < 200; i++)); do [[ -e $T/connected ]] && break; sleep 0.05; done
before=$(wc -l <"${SRV_LOG[s]}")
stop_server s
shutdown_log=$(tail -n +$((before + 1)) "${SRV_LOG[s]}")
grep -q "warning" <<<"$shutdown_log" && fail "warnings in a normal shutdown: $(grep warning <<<"$shutdown_log")"
grep -q "flush requests" "${SRV_LOG[s]}" || fail "no statistics for a server that served"
kill "$client" 2>/dev/null

# Log flooding: 10,000 refused requests from one client.
start_server f -t "$T/a.qcow2"
py logflood.py "$(uri f)" 10000
stop_server f
flog=${SRV_LOG[f]}
refused=$(grep -c "READ refused" "$flog")
suppressed=$(sed -n 's/.*: \([0-9]*\) log lines\? suppressed.*/\1/p' "$flog" | awk '{s += $1} END {if (NR) print s}')
say "10000 refusals: $refused logged, ${suppressed:-0} counted as suppressed, $(wc -l <"$flog") log lines in all"
((refused <= 25)) || fail "$refused lines for one client's refused requests: the log is not limited"
[[ -n $suppressed ]] || fail "no line counting the suppressed warnings"
((refused + suppressed == 10000)) || fail "$refused logged + $suppressed suppressed != 10000 refusals"
(($(wc -l <"$flog") < 60)) || fail "the flood produced $(wc -l <"$flog") log lines"
finish
