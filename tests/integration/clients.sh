#!/bin/bash
# Real clients end to end: qemu-img info/convert/compare/map over nbd://, qemu-io -f raw over
# nbd:// (write/read/zero/discard/flush/aio, pattern-verified), nbdcopy in both directions
# (multi-conn with -e 0), nbdinfo --map --totals; the image is qemu-img check clean after.
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io nbdcopy nbdinfo

cd "$T" || fail "cd"
M=$((1 << 20))
# A 64M sparse source with random data in a few places.
qemu-img create -q -f raw src.raw 64M || fail "qemu-img create"
for off in 0 5 17 33 63; do
    head -c $((M + off * 4096)) /dev/urandom | dd of=src.raw bs=1M seek=$off conv=notrunc,sparse status=none ||
        fail "dd"
done
truncate -s 64M src.raw

mkimg "$T/a.qcow2" 64M
start_server a -t -e 0 -x disk "$T/a.qcow2"
U=$(uri a disk)

# qemu-img info.
out=$(run_t 60 qemu-img info -f raw "$U" 2>&1) || fail "qemu-img info: $out"
grep -q "virtual size: 64 MiB (67108864 bytes)" <<<"$out" || fail "qemu-img info: $out"

# qemu-img convert into the export, compare, convert back out.
run_t 120 qemu-img convert -n -f raw -O raw src.raw "$U" || fail "qemu-img convert to nbd"
out=$(run_t 120 qemu-img compare -f raw -F raw src.raw "$U" 2>&1) || fail "qemu-img compare: $out"
grep -q "Images are identical" <<<"$out" || fail "qemu-img compare: $out"
run_t 120 qemu-img convert -f raw -O qcow2 "$U" out.qcow2 || fail "qemu-img convert from nbd"
out=$(qemu-img compare -f raw -F qcow2 src.raw out.qcow2 2>&1) || fail "round trip differs: $out"
# qemu-img map over NBD reflects the sparse layout: zero regions are reported.
out=$(run_t 60 qemu-img map --output=json -f raw "$U") || fail "qemu-img map over nbd"
grep -q '"zero": true' <<<"$out" || fail "qemu-img map over nbd reports no zero regions: $out"
out=$(run_t 60 nbdinfo --map --totals "$U") || fail "nbdinfo --map --totals"
say "nbdinfo --map --totals: $(tr '\n' ' ' <<<"$out")"

# qemu-io over NBD.
out=$(run_t 120 qemu-io -f raw \
    -c "write -P 0xa1 40M 1M" -c "write -P 0xa2 41M 4096" -c "write -f -P 0xa3 42M 65536" \
    -c "write -z 40M 64K" -c "discard 43M 1M" -c "flush" \
    -c "aio_write -P 0xa4 44M 1M" -c "aio_write -P 0xa5 45M 1M" -c "aio_flush" \
    -c "read -P 0 40M 64K" -c "read -P 0xa1 42008576 983040" -c "read -P 0xa2 41M 4096" \
    -c "read -P 0xa3 42M 65536" -c "read -P 0xa4 44M 1M" -c "read -P 0xa5 45M 1M" \
    -c "readv -P 0xa1 42074112 4096 4096" -c "writev -P 0xa6 46M 512 1024 2048" -c "read -P 0xa6 46M 3584" \
    -c "write -P 0xa7 67108352 512" -c "read -P 0xa7 67108352 512" \
    "$U" 2>&1) || fail "qemu-io over nbd: $out"
if grep -qiE "fail|error|mismatch" <<<"$out"; then echo "$out" >&2; fail "qemu-io over nbd reported errors"; fi
# Out of range through qemu-io is refused by someone (client or server) without harm.
out=$(run_t 60 qemu-io -f raw -c "read 67108352 1024" "$U" 2>&1)
grep -qiE "error|invalid|fail" <<<"$out" || fail "qemu-io read past the end did not fail: $out"
check_alive a "after qemu-io"

# nbdcopy: local -> nbd (several connections: CAN_MULTI_CONN with -e 0), nbd -> local.
mkimg "$T/b.qcow2" 64M
start_server b -t -e 0 "$T/b.qcow2"
run_t 120 nbdcopy --connections=4 --requests=16 src.raw "$(uri b)" || fail "nbdcopy to nbd"
run_t 120 nbdcopy "$(uri b)" copy.raw || fail "nbdcopy from nbd"
cmp src.raw copy.raw || fail "nbdcopy round trip differs"
run_t 120 nbdcopy "$U" "$(uri b)" || fail "nbdcopy nbd -> nbd"
out=$(run_t 120 qemu-img compare -f raw -F raw "$U" "$(uri b)" 2>&1) || fail "after nbd -> nbd copy: $out"
# nbdcopy --flush and --destination-is-zero variants.
mkimg "$T/c.qcow2" 64M
start_server c -t -e 0 "$T/c.qcow2"
run_t 120 nbdcopy --flush --destination-is-zero src.raw "$(uri c)" || fail "nbdcopy --flush --destination-is-zero"
out=$(run_t 120 qemu-img compare -f raw -F raw src.raw "$(uri c)" 2>&1) || fail "after nbdcopy --destination-is-zero: $out"

for s in a b c; do stop_server $s; done
img_check "$T/a.qcow2"
img_check "$T/b.qcow2"
img_check "$T/c.qcow2"
out=$(qemu-img compare -f raw -F qcow2 src.raw "$T/c.qcow2" 2>&1) || fail "image content after the server exited: $out"
finish
