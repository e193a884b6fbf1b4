#!/bin/bash
# fio --ioengine=nbd: random writes at depth 16 verified with crc32c (in the same job, then again
# on a fresh connection with --verify_only), plus a short mixed randrw run; the image is
# qemu-img check clean afterwards.
source "$(dirname "$0")/lib/common.bash"
need fio qemu-img
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio has no nbd engine"

cd "$T" || fail "cd"   # fio leaves verify state files in the working directory
mkimg "$T/a.qcow2" 64M
start_server a -t -e 0 "$T/a.qcow2"
common=(--ioengine=nbd --uri="$(uri a)" --size=16M --bs=4k --iodepth=16 --randseed=1234
    --rw=randwrite --verify=crc32c --verify_fatal=1 --name=job --output-format=normal)
run_t 180 fio "${common[@]}" --do_verify=1 --runtime=20 >"$T/fio1.log" 2>&1 ||
    { cat "$T/fio1.log" >&2; fail "fio randwrite + verify failed"; }
grep -qiE "verify.*(bad|fail)|crc32c.*fail" "$T/fio1.log" && { cat "$T/fio1.log" >&2; fail "fio verify failures"; }
grep -q "WRITE:.*io=16.0MiB" "$T/fio1.log" || { cat "$T/fio1.log" >&2; fail "fio did not write 16 MiB"; }
grep -q "READ:.*io=16.0MiB" "$T/fio1.log" || { cat "$T/fio1.log" >&2; fail "fio did not read back 16 MiB to verify"; }
run_t 180 fio "${common[@]}" --verify_only >"$T/fio2.log" 2>&1 ||
    { cat "$T/fio2.log" >&2; fail "fio --verify_only on a new connection failed"; }
grep -q "READ:.*io=16.0MiB" "$T/fio2.log" || { cat "$T/fio2.log" >&2; fail "fio --verify_only read nothing"; }
# Negative control: corrupt one block through NBD; --verify_only must now fail.
"$PYTHON" - "$(uri a)" <<'PY' || fail "corrupting a block"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\xde\xad" * 2048, 8 << 20)
h.shutdown()
PY
run_t 180 fio "${common[@]}" --verify_only >"$T/fio4.log" 2>&1 &&
    { cat "$T/fio4.log" >&2; fail "fio --verify_only passed on corrupted data: the verification proves nothing"; }
run_t 60 fio --ioengine=nbd --uri="$(uri a)" --offset=32M --size=16M --bs=64k --iodepth=16 --rw=randrw \
    --runtime=5 --time_based --name=mixed >"$T/fio3.log" 2>&1 ||
    { cat "$T/fio3.log" >&2; fail "fio randrw failed"; }
check_alive a "after fio"
stop_server a
img_check "$T/a.qcow2"
finish
