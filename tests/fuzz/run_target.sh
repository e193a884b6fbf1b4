#!/usr/bin/env bash
# Runs one fuzz target: first over every seed (each must pass), then fuzzing for SECONDS from
# the seeds and the corpus in WORK_DIR/corpus (kept between runs). Fails on any crash, leak,
# sanitizer report, timeout or violated invariant; the input is then in WORK_DIR/crash-* (or
# leak-*, timeout-*, oom-*) and the end of the log is printed. Prints one summary line:
#   TARGET: N execs in S s (E/s), cov C of P PCs (X%), ft F, corpus K inputs
# Usage: run_target.sh BINARY SEED_DIR WORK_DIR SECONDS
set -uo pipefail
bin=$1 seeds=$2 work=$3 seconds=$4
name=$(basename "$bin")
mkdir -p "$work/corpus"
log=$work/log
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
args=(-timeout=25 -rss_limit_mb=2560 -print_final_stats=1 -artifact_prefix="$work/")

fail() {
    echo "$name: $1 (log: $log)" >&2
    grep -v -E '^#[0-9]+.*(NEW|REDUCE|pulse)|NEW_FUNC' "$log" | tail -60 >&2
    ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2>/dev/null >&2
    exit 1
}

# Every seed alone: a seed that fails is a regression (the fuzzing below would also stop at it,
# but less clearly).
if ! "$bin" "${args[@]}" -runs=0 "$seeds" >"$log" 2>&1; then
    fail "a seed fails"
fi
start=$(date +%s)
if ! "$bin" "${args[@]}" -max_total_time="$seconds" "$work/corpus" "$seeds" >"$log" 2>&1; then
    fail "fuzzing found a failing input"
fi
elapsed=$(($(date +%s) - start))
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
pcs=$(sed -n 's/.*PC tables (\([0-9]*\) PCs).*/\1/p' "$log" | head -1)
last=$(grep -E '^#[0-9]+' "$log" | tail -1)
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
corpus=$(ls "$work/corpus" | wc -l)
pct=$(awk -v c="${cov:-0}" -v p="${pcs:-1}" 'BEGIN { printf "%.1f", 100 * c / p }')
echo "$name: $execs execs in $elapsed s ($rate/s), cov $cov of $pcs PCs ($pct%), ft $ft," \
    "corpus $corpus inputs"
