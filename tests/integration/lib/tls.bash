# TLS test credentials in qemu's layout, made with GnuTLS's certtool and psktool.
#   make_pki DIR   creates, under DIR:
#     server/   ca-cert.pem server-cert.pem server-key.pem  (CN=localhost, IP 127.0.0.1)
#     client/   ca-cert.pem client-cert.pem client-key.pem  (O=qnbd test,CN=client)
#     other/    the same for O=qnbd test,CN=intruder (signed by the same CA)
#     nocert/   ca-cert.pem only
#     psk/ badpsk/   keys.psk for user alice, with two different keys
# The layouts are what qnbd's --object tls-creds-*,endpoint=server and the clients' (qemu's
# endpoint=client, libnbd's tls-certificates=) expect.

_pki_cert() {  # _pki_cert DIR NAME TEMPLATE-LINES...
    local dir=$1 name=$2
    shift 2
    printf '%s\n' "$@" expiration_days=30 >"$dir/$name.info"
    certtool --generate-privkey --outfile "$dir/$name-key.pem" >/dev/null 2>&1 ||
        fail "certtool: key for $name"
    certtool --generate-certificate --load-privkey "$dir/$name-key.pem" \
        --load-ca-certificate "$dir/ca-cert.pem" --load-ca-privkey "$dir/ca-key.pem" \
        --template "$dir/$name.info" --outfile "$dir/$name-cert.pem" >/dev/null 2>&1 ||
        fail "certtool: certificate for $name"
}

make_pki() {
    local pki=$1 c
    mkdir -p "$pki"/{server,client,other,nocert,psk,badpsk}
    printf '%s\n' 'cn = qnbd test CA' ca cert_signing_key expiration_days=30 >"$pki/ca.info"
    certtool --generate-privkey --outfile "$pki/ca-key.pem" >/dev/null 2>&1 || fail "certtool: CA key"
    certtool --generate-self-signed --load-privkey "$pki/ca-key.pem" --template "$pki/ca.info" \
        --outfile "$pki/ca-cert.pem" >/dev/null 2>&1 || fail "certtool: CA"
    _pki_cert "$pki" server 'cn = localhost' 'organization = qnbd test' 'dns_name = localhost' \
        'ip_address = 127.0.0.1' tls_www_server encryption_key signing_key
    _pki_cert "$pki" client 'cn = client' 'organization = qnbd test' tls_www_client \
        encryption_key signing_key
    _pki_cert "$pki" other 'cn = intruder' 'organization = qnbd test' tls_www_client \
        encryption_key signing_key
    cp "$pki/ca-cert.pem" "$pki/server/"
    mv "$pki/server-cert.pem" "$pki/server-key.pem" "$pki/server/"
    for c in client other; do
        cp "$pki/ca-cert.pem" "$pki/$c/"
        mv "$pki/$c-cert.pem" "$pki/$c/client-cert.pem"
        mv "$pki/$c-key.pem" "$pki/$c/client-key.pem"
    done
    cp "$pki/ca-cert.pem" "$pki/nocert/"
    psktool -u alice -p "$pki/psk/keys.psk" >/dev/null 2>&1 || fail "psktool"
    psktool -u alice -p "$pki/badpsk/keys.psk" >/dev/null 2>&1 || fail "psktool"
}
