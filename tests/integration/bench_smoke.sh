#!/bin/bash
# scripts/bench.sh --smoke with the test build: every workload runs against qnbd, qemu-nbd and
# the raw servers at a tiny size (W8 through nbdfuse and a loop device where the host has
# them); the table is complete, every qnbd figure is non-zero, every written image is qemu-img
# check clean and fio --verify passes. (Figures are not judged here.)
source "$(dirname "$0")/lib/common.bash"
need fio qemu-img qemu-nbd qemu-io nbdinfo
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio has no nbd engine"

run_t 900 "$QNBD_SOURCE_DIR/scripts/bench.sh" --smoke --qnbd "$QNBD" --dir "$T/bench" \
    >"$T/out.txt" 2>"$T/err.txt" || { cat "$T/err.txt" "$T/out.txt" >&2; fail "bench.sh --smoke failed"; }
cat "$T/out.txt"
rows=$(grep -cE '^W[1-8] ' "$T/out.txt")
want=22
grep -q "W8 skipped" "$T/err.txt" && want=19  # no FUSE or loop devices here
[ "$rows" = "$want" ] || fail "expected $want workload rows, got $rows"
python3 - "$T/out.txt" <<'PY' || fail "table check"
import re, sys
for line in open(sys.argv[1]):
    if not re.match(r"W[1-8] ", line):
        continue
    f = line.split()
    unit = next(i for i, x in enumerate(f) if x in ("MB/s", "IOPS"))
    qnbd, qemu = float(f[unit + 1]), float(f[unit + 2])
    if qnbd <= 0 or qemu <= 0:
        sys.exit(f"zero figure: {line.strip()}")
    if f[-1] not in ("clean", "-"):
        sys.exit(f"image not clean after: {line.strip()}")
PY
[ "$(grep -c '^verify .* pass$' "$T/out.txt")" = 2 ] || fail "fio --verify did not pass for W3 and W5"
