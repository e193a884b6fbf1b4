# Guest side of nbd-client-tls: a plain nbd-client must fail, then nbd-client -x with the
# client certificate (the server's certificate names localhost, so -H localhost) attaches
# /dev/nbd0 for an ext4 round trip and a clean disconnect.
. /e2e/guest-lib.sh

if nbd-client -N disk "$NBD_HOST" "$NBD_PORT" /dev/nbd0 >/tmp/plain.log 2>&1; then
    cat /tmp/plain.log
    nbd-client -d /dev/nbd0
    die "a plain nbd-client was let in"
fi
detail "plain nbd-client refused: $(tail -1 /tmp/plain.log)"
run nbd-client -N disk -enable-tls -tlshostname localhost -cacertfile /pki/ca-cert.pem \
    -certfile /pki/client-cert.pem -keyfile /pki/client-key.pem "$NBD_HOST" "$NBD_PORT" /dev/nbd0
wait_nbd /dev/nbd0
detail "size=$(($(nbd_size /dev/nbd0) * 512))"
ext4_roundtrip /dev/nbd0
run nbd-client -d /dev/nbd0
wait_nbd_gone /dev/nbd0
