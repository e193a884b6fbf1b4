#!/bin/bash
# TLS as qemu-nbd spells it (--object tls-creds-x509|tls-creds-psk, --tls-creds,
# --tls-authz with authz-simple), with real TLS clients: libnbd (nbdinfo, nbdcopy) with
# nbds:// and tls-certificates= / tls-psk-file=, and qemu-img / qemu-io with
# --object tls-creds-*,endpoint=client. Refused: a plain client (every option but STARTTLS
# and ABORT gets NBD_REP_ERR_TLS_REQD, LIST reveals nothing), a client without a certificate
# when verify-peer=on, a certificate or PSK username other than --tls-authz's, a wrong PSK;
# each with a log line saying why, and the server keeps serving. Also refused at start: -c
# with TLS, unknown objects and properties, a client endpoint, a missing file. A client that
# stalls after STARTTLS is dropped by the handshake timeout; garbage instead of a TLS
# handshake is logged and dropped. The server ends each TLS session with close_notify.
source "$(dirname "$0")/lib/common.bash"
need certtool
need psktool
need nbdinfo
need nbdcopy

source "$(dirname "$0")/lib/tls.bash"
pki=$T/pki
make_pki "$pki"

X509="tls-creds-x509,id=tls0,endpoint=server,dir=$pki/server"
PSK="tls-creds-psk,id=tls0,endpoint=server,dir=$pki/psk"
qemu_x509() { echo "tls-creds-x509,id=tls0,endpoint=client,dir=$pki/$1"; }

mkimg "$T/a.qcow2" 64M
refused_start "not supported with a host device" -c /dev/nbd0 --object "$X509" --tls-creds tls0 "$T/a.qcow2"
refused_start "tls-creds-anon is not supported" --object tls-creds-anon,id=a --tls-creds a "$T/a.qcow2"
refused_start "endpoint must be server" --object "$(qemu_x509 client)" --tls-creds tls0 "$T/a.qcow2"
refused_start "property 'priority' is not supported" --object "$X509,priority=NORMAL" \
    --tls-creds tls0 "$T/a.qcow2"
refused_start "no tls-creds object with that id" --tls-creds nope "$T/a.qcow2"
refused_start "needs --tls-creds" --object authz-simple,id=z,identity=x --tls-authz z "$T/a.qcow2"
refused_start "cannot read $pki/client/server-cert.pem" --object \
    "tls-creds-x509,id=tls0,endpoint=server,dir=$pki/client" --tls-creds tls0 "$T/a.qcow2"

# --- x509 with verify-peer=on (qemu's default) ------------------------------------------------
start_server x -t -e 0 --handshake-timeout 3 --object "$X509" --tls-creds tls0 -x disk \
    -D "TLS disk" "$T/a.qcow2"
PORT=${SRV_PORT[x]}
TLSURI="nbds://127.0.0.1:$PORT/disk?tls-certificates=$pki/client"
out=$(run_t 30 nbdinfo --size "$TLSURI") || fail "nbdinfo over TLS failed"
check "size over TLS" test "$out" = 67108864
out=$(run_t 30 nbdinfo --list "nbds://127.0.0.1:$PORT/?tls-certificates=$pki/client") ||
    fail "nbdinfo --list over TLS failed"
grep -q "TLS disk" <<<"$out" || fail "LIST over TLS does not show the export: $out"

# A plain client: refused before anything is revealed.
if out=$(run_t 30 nbdinfo --list "nbd://127.0.0.1:$PORT/" 2>&1); then
    fail "a plain LIST was answered: $out"
fi
grep -q "disk" <<<"$out" && fail "a plain LIST revealed the export name: $out"
out=$(run_t 30 nbdinfo --size "nbd://127.0.0.1:$PORT/disk" 2>&1) && fail "a plain GO was served"
grep -q "server requires TLS" <<<"$out" || fail "the plain client was not told TLS is required: $out"
# No client certificate, and a certificate the CA did not sign... and one it did, for the
# wrong identity later.
run_t 30 nbdinfo --size "nbds://127.0.0.1:$PORT/disk?tls-certificates=$pki/nocert" \
    >/dev/null 2>&1 && fail "a client without a certificate was let in"
grep -q "client certificate refused\|TLS handshake failed" "${SRV_LOG[x]}" ||
    fail "no log line says why the client without a certificate was refused"

# A client that asks for STARTTLS and then stalls is dropped by the handshake timeout; one that
# sends garbage instead of a TLS ClientHello fails the handshake with a log line. The server
# serves on.
"$PYTHON" - "$PORT" <<'EOF' || fail "raw STARTTLS clients"
import socket, struct, sys, time
def starttls(port):
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.settimeout(20)
    greeting = b""
    while len(greeting) < 18:
        greeting += s.recv(18 - len(greeting))
    s.sendall(struct.pack(">I", 1) + b"IHAVEOPT" + struct.pack(">II", 5, 0))
    reply = b""
    while len(reply) < 20:
        reply += s.recv(20 - len(reply))
    assert struct.unpack(">QII", reply[:16])[2] == 1, "STARTTLS not acknowledged"
    return s
stall = starttls(sys.argv[1])
start = time.time()
assert stall.recv(1) == b"", "the stalled TLS client was sent something"
took = time.time() - start
assert 1 <= took <= 10, f"the stalled TLS client was dropped after {took:.1f} s"
junk = starttls(sys.argv[1])
junk.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
junk.recv(4096)
EOF
sleep 0.5
grep -q "TLS handshake failed" "${SRV_LOG[x]}" || fail "no log line for the garbage TLS handshake"

# qemu-io writes over TLS, qemu-img reads back; nbdcopy copies it out.
QOPTS="driver=nbd,host=127.0.0.1,port=$PORT,export=disk,tls-creds=tls0"
run_t 60 qemu-io --object "$(qemu_x509 client)" --image-opts "$QOPTS" \
    -c "write -P 0x5a 1M 4M" -c "flush" >/dev/null || fail "qemu-io write over TLS"
run_t 60 qemu-io --object "$(qemu_x509 client)" --image-opts "$QOPTS" -r \
    -c "read -P 0x5a 1M 4M" -c "read -P 0 0 1M" | grep -q "read 4194304" ||
    fail "qemu-io read over TLS"
out=$(run_t 60 qemu-img info --object "$(qemu_x509 client)" --image-opts "$QOPTS") ||
    fail "qemu-img info over TLS"
grep -q "virtual size: 64 MiB" <<<"$out" || fail "qemu-img info over TLS: $out"
run_t 60 nbdcopy "$TLSURI" "$T/copy.raw" || fail "nbdcopy over TLS"
cmp -n 1048576 -i 1048576:0 "$T/copy.raw" <(head -c 1048576 /dev/zero | tr '\0' 'Z') ||
    fail "nbdcopy over TLS did not read what qemu-io wrote"
# The session ends with close_notify (read by OpenSSL, through Python's ssl module).
py tls_close.py "$PORT" "$pki/client" disk
check_alive x "after the refused clients"
stop_server x
img_check "$T/a.qcow2"

# SIGTERM while a TLS client writes: the requests in flight finish, the server exits 0 and the
# image is clean.
head -c 48M /dev/urandom >"$T/src.raw"
mkimg "$T/w.qcow2" 64M
start_server w -t -e 0 --object "$X509" --tls-creds tls0 "$T/w.qcow2"
run_t 60 nbdcopy --requests=16 "$T/src.raw" \
    "nbds://127.0.0.1:${SRV_PORT[w]}/?tls-certificates=$pki/client" >/dev/null 2>&1 &
copier=$!
sleep 0.5
stop_server w
wait "$copier" 2>/dev/null || true
img_check "$T/w.qcow2"

# --- --tls-authz: only the client certificate's distinguished name ---------------------------
DN="O=qnbd test,CN=client"
# A comma inside a property value is doubled, as in qemu.
start_server z -t -e 0 --object "$X509" --object "authz-simple,id=auth0,identity=${DN//,/,,}" \
    --tls-creds tls0 --tls-authz auth0 "$T/a.qcow2"
run_t 30 nbdinfo --size "nbds://127.0.0.1:${SRV_PORT[z]}/?tls-certificates=$pki/client" \
    >/dev/null || fail "the authorized certificate was refused"
run_t 30 nbdinfo --size "nbds://127.0.0.1:${SRV_PORT[z]}/?tls-certificates=$pki/other" \
    >/dev/null 2>&1 && fail "a certificate of another identity was let in"
grep -q "client identity 'O=qnbd test,CN=intruder' is not authorized" "${SRV_LOG[z]}" ||
    fail "no log line names the refused identity"
stop_server z

# --- x509 with verify-peer=off: no client certificate needed -------------------------------------
start_server n -t -e 0 --object "$X509,verify-peer=off" --tls-creds tls0 "$T/a.qcow2"
run_t 30 nbdinfo --size "nbds://127.0.0.1:${SRV_PORT[n]}/?tls-certificates=$pki/nocert" \
    >/dev/null || fail "verify-peer=off refused a client without a certificate"
stop_server n

# --- PSK ---------------------------------------------------------------------------------------
start_server p -t -e 0 --object "$PSK" --tls-creds tls0 "$T/a.qcow2"
PORT=${SRV_PORT[p]}
out=$(run_t 30 nbdinfo --size \
    "nbds://alice@127.0.0.1:$PORT/?tls-psk-file=$pki/psk/keys.psk") || fail "nbdinfo with PSK"
check "size over PSK" test "$out" = 67108864
run_t 30 nbdinfo --size "nbds://alice@127.0.0.1:$PORT/?tls-psk-file=$pki/badpsk/keys.psk" \
    >/dev/null 2>&1 && fail "a wrong PSK was let in"
run_t 60 qemu-io --object "tls-creds-psk,id=tls0,endpoint=client,dir=$pki/psk,username=alice" \
    --image-opts "driver=nbd,host=127.0.0.1,port=$PORT,tls-creds=tls0" -r \
    -c "read -P 0x5a 1M 4M" | grep -q "read 4194304" || fail "qemu-io read over PSK"
check_alive p "after the wrong PSK"
stop_server p

# --tls-authz with PSK: the username. bob's key is valid, but only alice is authorized.
mkdir -p "$pki/two"
cp "$pki/psk/keys.psk" "$pki/two/"
psktool -u bob -p "$pki/two/keys.psk" >/dev/null 2>&1 || fail "psktool bob"
start_server q -t -e 0 --object "tls-creds-psk,id=tls0,endpoint=server,dir=$pki/two" \
    --object authz-simple,id=a0,identity=alice --tls-creds tls0 --tls-authz a0 "$T/a.qcow2"
run_t 30 nbdinfo --size "nbds://alice@127.0.0.1:${SRV_PORT[q]}/?tls-psk-file=$pki/two/keys.psk" \
    >/dev/null || fail "alice was refused"
run_t 30 nbdinfo --size "nbds://bob@127.0.0.1:${SRV_PORT[q]}/?tls-psk-file=$pki/two/keys.psk" \
    >/dev/null 2>&1 && fail "bob was let in"
grep -q "client identity 'bob' is not authorized" "${SRV_LOG[q]}" || fail "no log line names bob"
stop_server q
img_check "$T/a.qcow2"
finish
