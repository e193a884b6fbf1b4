# Shared helpers for tests/integration/*.sh. Sourced, never run: it is not a test itself
# (CMake only globs tests/integration/*.sh, and running this file directly does nothing).
#
# Each script gets:
#   $T        a private temp dir, removed on exit (also exported as TMPDIR, so qnbd -s puts its
#             overlay there and a test can check nothing is left behind)
#   start_server NAME [QNBD ARGS...]   qnbd on a free TCP port (unless -k is given), log in $T/NAME.log
#   uri NAME [EXPORT]                  nbd:// URI of a started server
#   stop_server NAME [RC]              SIGTERM, wait, check the exit code (default 0) and the log
#   wait_server_exit NAME [SECS] [RC]  wait for a server to exit by itself
#   finish                             stop every running server, check each exited cleanly, PASS
#   fail MSG / skip MSG / check COND MSG / py SCRIPT ARGS...
# Every server is killed and $T removed on exit, whatever happened.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "common.bash is a library for tests/integration/*.sh; nothing to run"
    exit 0
fi

set -uo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH   # nbdsh/python3-libnbd live with /usr/bin/python3
export LC_ALL=C
unset PYTHONHOME

LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INTEG_DIR=$(dirname "$LIB_DIR")
PY_DIR=$INTEG_DIR/py
PYTHON=/usr/bin/python3
export PYTHONPATH=$PY_DIR
export PYTHONDONTWRITEBYTECODE=1
TEST_NAME=$(basename "${0%.sh}")

if [[ -z "${QNBD:-}" ]]; then
    QNBD=${QNBD_BUILD_DIR:-/tmp/integ-build}/qnbd
fi
if [[ ! -x "$QNBD" ]]; then
    echo "FAIL: qnbd binary not found (QNBD=$QNBD)" >&2
    exit 1
fi
export QNBD
# ASan/UBSan builds: report everything, and make a sanitizer finding visible in the exit code.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:exitcode=86}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

T=$(mktemp -d "${TMPDIR:-/tmp}/qnbd-$TEST_NAME.XXXXXX")
export TMPDIR=$T

declare -A SRV_PID=() SRV_PORT=() SRV_LOG=() SRV_SOCK=() SRV_RC=()
SERVERS=()
EXTRA_PIDS=()       # processes not started by start_server (e.g. --fork daemons) to kill at exit,
                    # as "PID:STARTTIME" so a recycled pid is never killed (see track_pid)
_FAIL_REPORTED=0

say() { echo "[$TEST_NAME] $*"; }

_dump_logs() {
    local name
    for name in "${SERVERS[@]}"; do
        echo "----- server '$name' log (${SRV_LOG[$name]}), last 60 lines -----" >&2
        tail -n 60 "${SRV_LOG[$name]}" >&2 2>/dev/null || true
    done
}

fail() {
    echo "FAIL [$TEST_NAME]: $*" >&2
    if (( !_FAIL_REPORTED )); then
        _FAIL_REPORTED=1
        _dump_logs
    fi
    exit 1
}

skip() {
    echo "SKIP [$TEST_NAME]: $*"
    exit 77
}

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || skip "'$c' is not installed"
    done
}

need_python_nbd() {
    "$PYTHON" -c 'import nbd' 2>/dev/null || skip "python3 libnbd bindings (python3-libnbd) not installed"
}

# check COMMAND... : fail with the command line when it is false.
check() {
    local msg=$1; shift
    "$@" || fail "$msg (command: $*)"
}

# alive PID: running and not a zombie.
alive() {
    local pid=$1 state
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# start_time PID: the process start time (clock ticks since boot), empty if gone.
start_time() {
    awk '{print $22}' "/proc/$1/stat" 2>/dev/null
}

# track_pid PID: kill this process at exit if it is still the same process then.
track_pid() {
    EXTRA_PIDS+=("$1:$(start_time "$1")")
}

# _same_process PID:STARTTIME: still running and not a recycled pid.
_same_process() {
    local pid=${1%%:*} st=${1#*:}
    alive "$pid" && [[ -n $st && $(start_time "$pid") == "$st" ]]
}

free_port() {
    "$PYTHON" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# Waits until LOG says the server listens; 1 if the process died first or 30 s passed.
_wait_listening() {
    local pid=$1 log=$2 i
    for ((i = 0; i < 600; i++)); do
        grep -q "listening on" "$log" 2>/dev/null && return 0
        alive "$pid" || return 1
        sleep 0.05
    done
    return 1
}

# start_server NAME [QNBD ARGS...] (image last, as for qnbd). Adds -p PORT unless -k is used.
start_server() {
    local name=$1; shift
    local log=$T/$name.log sock="" a port pid
    local prev=""
    for a in "$@"; do
        [[ $prev == -k || $prev == --socket ]] && sock=$a
        [[ $a == --socket=* ]] && sock=${a#--socket=}
        prev=$a
    done
    for _ in 1 2 3 4 5; do
        port=""
        if [[ -z $sock ]]; then
            port=$(free_port)
            "$QNBD" -p "$port" "$@" >"$log" 2>&1 &
        else
            "$QNBD" "$@" >"$log" 2>&1 &
        fi
        pid=$!
        SRV_PID[$name]=$pid SRV_PORT[$name]=$port SRV_LOG[$name]=$log SRV_SOCK[$name]=$sock
        if _wait_listening "$pid" "$log"; then
            SERVERS+=("$name")
            say "server '$name' pid $pid ${port:+port $port}${sock:+socket $sock}: qnbd $*"
            return 0
        fi
        if ! alive "$pid" && grep -q "in use" "$log"; then
            wait "$pid" 2>/dev/null
            continue  # lost a race for the port with another test: pick another
        fi
        SERVERS+=("$name")
        fail "server '$name' did not start listening (qnbd $*)"
    done
    SERVERS+=("$name")
    fail "server '$name': no free port after 5 attempts"
}

# uri NAME [EXPORT]
uri() {
    local name=$1 exp=${2:-}
    if [[ -n ${SRV_SOCK[$name]} ]]; then
        echo "nbd+unix:///$exp?socket=${SRV_SOCK[$name]}"
    else
        echo "nbd://127.0.0.1:${SRV_PORT[$name]}/$exp"
    fi
}

server_alive() { alive "${SRV_PID[$1]}"; }

check_alive() {
    local name=$1
    server_alive "$name" || fail "server '$name' is not running any more${2:+ ($2)}"
}

# check_log_clean LOG: no sanitizer reports, crashes or internal errors.
check_log_clean() {
    local log=$1
    if grep -nE "AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|internal error|critical:|Segmentation|Aborted|terminate called" "$log" >&2; then
        fail "sanitizer report, crash or internal error in $log"
    fi
}

# wait_server_exit NAME [SECS=20] [EXPECTED_RC=0]: waits for the server to exit on its own.
wait_server_exit() {
    local name=$1 secs=${2:-20} want=${3:-0} pid=${SRV_PID[$1]} i rc
    for ((i = 0; i < secs * 20; i++)); do
        alive "$pid" || break
        sleep 0.05
    done
    alive "$pid" && fail "server '$name' still running after $secs s"
    wait "$pid"; rc=$?
    SRV_RC[$name]=$rc
    check_log_clean "${SRV_LOG[$name]}"
    [[ $want == any || $rc == "$want" ]] || fail "server '$name' exited with $rc, expected $want"
    return 0
}

# stop_server NAME [EXPECTED_RC=0]: SIGTERM, then as wait_server_exit.
stop_server() {
    local name=$1 want=${2:-0}
    [[ -n ${SRV_RC[$name]:-} ]] && return 0
    check_alive "$name" "before SIGTERM"
    kill -TERM "${SRV_PID[$name]}" 2>/dev/null
    wait_server_exit "$name" 20 "$want"
}

# finish: every server still running must be alive (never crashed), stop on SIGTERM with 0 and
# have a clean log. Then PASS.
finish() {
    local name
    for name in "${SERVERS[@]}"; do
        if [[ -z ${SRV_RC[$name]:-} ]]; then
            server_alive "$name" || { wait "${SRV_PID[$name]}"; fail "server '$name' died (exit $?)"; }
            stop_server "$name"
        fi
    done
    say "PASS"
    exit 0
}

# py SCRIPT ARGS... : runs tests/integration/py/SCRIPT with the system python (libnbd bindings).
py() {
    local script=$1; shift
    say "py $script $*"
    timeout 300 "$PYTHON" "$PY_DIR/$script" "$@" || fail "$script $* failed (exit $?)"
}

# run_t SECS CMD... : a client command with a time limit (a hung client fails, never blocks).
run_t() {
    local secs=$1; shift
    timeout --kill-after=5 "$secs" "$@"
}

# refused_start MESSAGE QNBD ARGS...: qnbd exits 1 at once and its output contains MESSAGE.
refused_start() {
    local want=$1 out rc
    shift
    out=$(run_t 20 "$QNBD" "$@" 2>&1); rc=$?
    [[ $rc == 1 ]] || fail "qnbd $* exited $rc, expected 1: $out"
    grep -q -- "$want" <<<"$out" || fail "qnbd $*: expected '$want', got: $out"
}

# mkimg PATH [SIZE=64M] [qnbd create options...]
mkimg() {
    local path=$1 size=${2:-64M}
    shift; (($#)) && shift
    "$QNBD" create "$@" "$path" "$size" >/dev/null || fail "qnbd create $* $path $size failed"
}

# img_check PATH: qemu-img check must report no errors and no leaks.
img_check() {
    local out
    out=$(qemu-img check -f qcow2 "$1" 2>&1) || { echo "$out" >&2; fail "qemu-img check $1 failed"; }
    grep -q "No errors were found" <<<"$out" || { echo "$out" >&2; fail "qemu-img check $1 is not clean"; }
}

_cleanup() {
    local rc=$? name pid
    for name in "${SERVERS[@]}"; do
        pid=${SRV_PID[$name]}
        if [[ -z ${SRV_RC[$name]:-} ]] && alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null
        fi
    done
    local extra
    for extra in "${EXTRA_PIDS[@]}"; do
        _same_process "$extra" && kill -TERM "${extra%%:*}" 2>/dev/null
    done
    local deadline=$((SECONDS + 5))
    for name in "${SERVERS[@]}"; do
        pid=${SRV_PID[$name]}
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
    done
    for extra in "${EXTRA_PIDS[@]}"; do
        while _same_process "$extra" && ((SECONDS < deadline)); do sleep 0.05; done
        _same_process "$extra" && kill -KILL "${extra%%:*}" 2>/dev/null
    done
    if ((rc != 0 && rc != 77 && !_FAIL_REPORTED)); then
        echo "FAIL [$TEST_NAME]: exit status $rc" >&2
        _dump_logs
    fi
    rm -rf "$T"
    exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT TERM HUP
