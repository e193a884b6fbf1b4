# Guest side of nbd-client-ext4: Debian's nbd-client on /dev/nbd0, an ext4 round trip
# (see ext4_roundtrip in guest-lib.sh), then a clean disconnect.
. /e2e/guest-lib.sh

run nbd-client -N disk "$NBD_HOST" "$NBD_PORT" /dev/nbd0
wait_nbd /dev/nbd0
detail "size=$(($(nbd_size /dev/nbd0) * 512))"
ext4_roundtrip /dev/nbd0
run nbd-client -d /dev/nbd0
wait_nbd_gone /dev/nbd0
