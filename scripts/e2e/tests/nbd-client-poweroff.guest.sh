# Guest side of nbd-client-poweroff: connect (two connections), write 4 MiB of random data with
# O_DIRECT, report its sha256 and exit with the device still attached: /init then powers the
# guest off at once (poweroff -f), so the server's connections end without a disconnect.
. /e2e/guest-lib.sh

run nbd-client -N disk -C 2 "$NBD_HOST" "$NBD_PORT" /dev/nbd0
wait_nbd /dev/nbd0
run dd if=/dev/urandom of=/tmp/data bs=1M count=4 status=none
run dd if=/tmp/data of=/dev/nbd0 bs=1M oflag=direct status=none
detail "sha256=$(sha256sum </tmp/data | cut -d' ' -f1)"
