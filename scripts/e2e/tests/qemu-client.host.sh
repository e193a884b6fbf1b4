#!/bin/bash
# QEMU as the NBD client: the guest's disks are `-drive driver=nbd,...` of the host's
# qemu-system, first one export in the clear, then two exports of one qnbd (--export) over TLS
# (qemu's tls-creds-x509,endpoint=client with a client certificate; verify-peer=on) as two
# virtio disks. The guest runs fio with crc32c verification on each (qemu-client.guest.sh).
# Afterwards every image is clean and reads back, through qemu-img, what fio verified.
source "$(dirname "$0")/../lib.bash"
source "$E2E_REPO/tests/integration/lib/tls.bash"
e2e_need qemu-img certtool psktool

# nbd_drive ID PORT EXPORT [EXTRA]: a QEMU NBD drive and its virtio disk.
nbd_drive() {
    echo "-drive driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$2,export=$3${4:-},if=none,id=$1,cache.direct=on"
    echo "-device virtio-blk-pci,drive=$1"
}

mkimg "$T/plain.qcow2" 128M
start_server plain -t -x disk "$T/plain.qcow2"
# shellcheck disable=SC2046  # the drive options are words
e2e_boot_vm --env E2E_DISKS=vda qemu-plain qemu-client.guest.sh -- \
    $(nbd_drive d0 "${SRV_PORT[plain]}" disk)
e2e_wait_result qemu-plain
stop_server plain
img_check "$T/plain.qcow2"

make_pki "$T/pki"
mkimg "$T/one.qcow2" 128M
mkimg "$T/two.qcow2" 96M
start_server tls -t -e 0 --object "tls-creds-x509,id=tls0,endpoint=server,dir=$T/pki/server" \
    --tls-creds tls0 --export "name=one,file=$T/one.qcow2" --export "name=two,file=$T/two.qcow2"
P=${SRV_PORT[tls]}
# shellcheck disable=SC2046
e2e_boot_vm --env "E2E_DISKS=vda vdb" qemu-tls qemu-client.guest.sh -- \
    -object "tls-creds-x509,id=tls0,endpoint=client,dir=$T/pki/client" \
    $(nbd_drive d0 "$P" one ",tls-creds=tls0") $(nbd_drive d1 "$P" two ",tls-creds=tls0")
e2e_wait_result qemu-tls
grep -q "TLS handshake\|refused" "${SRV_LOG[tls]}" && fail "a TLS client was refused: $(cat "${SRV_LOG[tls]}")"
stop_server tls
img_check "$T/one.qcow2"
img_check "$T/two.qcow2"
# fio wrote its blocks over the first 48 MiB of each disk: allocated in the image now.
for i in plain one two; do
    n=$(qemu-img map --output=json "$T/$i.qcow2" | grep -c '"data": true')
    ((n > 0)) || fail "$i.qcow2 holds no data after fio"
done
finish
