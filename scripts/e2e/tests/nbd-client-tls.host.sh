#!/bin/bash
# Debian's nbd-client in the guest over TLS (-enable-tls -cacertfile -certfile -keyfile: the
# long spellings of the -x -A -F -K its help lists, which this build does not take short; its
# userspace TLS proxy sits in front of the kernel's socket) against qnbd --tls-creds on the
# host with verify-peer=on: a plain
# nbd-client is refused, the TLS one runs an ext4 round trip on /dev/nbd0. The image is clean
# afterwards (the server, with -t, stopped by SIGTERM) and holds a clean ext4 file system.
source "$(dirname "$0")/../lib.bash"
source "$E2E_REPO/tests/integration/lib/tls.bash"
e2e_need qemu-img e2fsck certtool psktool

make_pki "$T/pki"
stage=$T/stage
mkdir -p "$stage/pki"
cp "$T/pki/client/"*.pem "$stage/pki/"
mkimg "$T/disk.qcow2" 256M
start_server srv -t -x disk -e 8 --object "tls-creds-x509,id=tls0,endpoint=server,dir=$T/pki/server" \
    --tls-creds tls0 "$T/disk.qcow2"
e2e_boot_vm --fwd "${SRV_PORT[srv]}" --add "$stage" tls nbd-client-tls.guest.sh
e2e_wait_result tls
stop_server srv
grep -q "TLS is required\|before STARTTLS" "${SRV_LOG[srv]}" ||
    fail "the server log does not show the plain nbd-client refused"
img_check "$T/disk.qcow2"
qemu-img convert -f qcow2 -O raw "$T/disk.qcow2" "$T/disk.raw" || fail "qemu-img convert"
e2fsck -fn "$T/disk.raw" >"$T/e2fsck.log" 2>&1 || { cat "$T/e2fsck.log" >&2; fail "e2fsck on the host"; }
finish
