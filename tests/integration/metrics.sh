#!/bin/bash
# --metrics: a Prometheus endpoint on a unix socket (and on loopback TCP). Known NBD traffic
# shows up as exact counters (requests, bytes, errors per errno, histogram counts), flushes as
# barriers and fdatasyncs, the connections gauge goes 0 -> 1 -> 0; other paths get 404, an
# oversized request 400; a stalled scraper neither blocks other scrapes nor keeps a server
# without -t running once its last NBD client has left.
source "$(dirname "$0")/lib/common.bash"
need curl
need_python_nbd

M=$T/metrics.sock
scrape() { run_t 10 curl -sS --unix-socket "$M" "http://qnbd$1"; }
# status PATH [CURL ARGS...]: the HTTP status of a request.
status() {
    local path=$1; shift
    run_t 10 curl -s -o /dev/null -w '%{http_code}' --unix-socket "$M" "$@" "http://qnbd$path"
}

mkimg "$T/a.qcow2" 64M
start_server a -t -e 0 -k "$T/nbd.sock" --metrics "unix:$M" "$T/a.qcow2"
grep -q "metrics on unix socket $M" "${SRV_LOG[a]}" || fail "no log line for the metrics socket"

out=$(scrape /metrics) || fail "scrape failed"
grep -qx 'qnbd_connections 0' <<<"$out" || fail "connections is not 0 before any client"
grep -qx 'qnbd_connections_total 0' <<<"$out" || fail "connections_total is not 0 before any client"
grep -qx 'qnbd_requests_total{export="",command="WRITE"} 0' <<<"$out" ||
    fail "no zero WRITE counter before any request"
grep -q '^# TYPE qnbd_request_duration_seconds histogram$' <<<"$out" || fail "no histogram TYPE"
grep -q '^qnbd_build_info{version="[0-9.]*"} 1$' <<<"$out" || fail "no build info"

check "GET / is not found" test "$(status /)" = 404
check "GET /metricsx is not found" test "$(status /metricsx)" = 404
check "POST /metrics is not found" test "$(status /metrics -X POST)" = 404
check "GET /metrics is found" test "$(status /metrics)" = 200
py metrics.py oversized "$M"

py metrics.py traffic "$(uri a)" "$M"
out=$(scrape /metrics) || fail "scrape after the client left failed"
grep -qx 'qnbd_connections 0' <<<"$out" || fail "connections is not 0 after the client left"
grep -qx 'qnbd_connections_total 1' <<<"$out" || fail "connections_total is not 1"

# A stalled scraper (half a request line, then nothing) is cut off after the 5 s deadline;
# scrapes meanwhile are answered at once.
"$PYTHON" "$PY_DIR/metrics.py" stall "$M" 4.5 8 >"$T/stall.log" 2>&1 &
stall_pid=$!
"$PYTHON" "$PY_DIR/metrics.py" stall "$M" 4.5 8 >"$T/stall2.log" 2>&1 &
stall2_pid=$!
sleep 0.5
start=$SECONDS
for _ in 1 2 3; do
    py metrics.py expect "$M" 'qnbd_requests_total{export="",command="WRITE"}' 6
done
((SECONDS - start <= 2)) || fail "scrapes took $((SECONDS - start)) s next to stalled scrapers"
wait $stall_pid || { cat "$T/stall.log" >&2; fail "stalled scraper"; }
wait $stall2_pid || { cat "$T/stall2.log" >&2; fail "second stalled scraper"; }
check_alive a "after the scrapes"
stop_server a
[[ ! -e $M ]] || fail "the metrics socket was not removed at exit"
img_check "$T/a.qcow2"

# Read-only export on loopback TCP (port chosen by the kernel), without -t: EPERM is counted,
# and the server exits when its NBD client leaves although a scraper is still connected.
start_server ro -r -x ro --metrics tcp:0 "$T/a.qcow2"
maddr=$(sed -n 's/.*metrics on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "${SRV_LOG[ro]}")
[[ -n $maddr ]] || fail "no metrics address in the log"
check "TCP scrape" test "$(run_t 10 curl -s -o /dev/null -w '%{http_code}' "http://$maddr/metrics")" = 200
# (Its deadline is 5 s away: closed within 3.5 s, it was closed by the server's exit.)
"$PYTHON" "$PY_DIR/metrics.py" stall "$maddr" 0 3.5 >"$T/stall3.log" 2>&1 &
stall3_pid=$!
sleep 0.5
py metrics.py readonly "$(uri ro ro)" "$maddr"
wait_server_exit ro 3
wait $stall3_pid || { cat "$T/stall3.log" >&2; fail "the scraper outlived the server's exit"; }

# A bad --metrics address is refused before anything is served.
run_t 20 "$QNBD" --metrics nonsense "$T/a.qcow2" >"$T/bad.log" 2>&1 && fail "--metrics nonsense accepted"
grep -q "invalid address 'nonsense'" "$T/bad.log" || fail "no message for a bad --metrics address"
run_t 20 "$QNBD" -k "$T/s.sock" --metrics "$T/s.sock" "$T/a.qcow2" >"$T/bad.log" 2>&1 &&
    fail "--metrics on the NBD socket accepted"
finish
