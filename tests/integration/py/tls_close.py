"""A TLS session ends with the server's close_notify alert, not a cut connection.

usage: tls_close.py PORT CLIENT_DIR EXPORT

Negotiates NBD_OPT_STARTTLS by hand, upgrades the socket with Python's ssl module (OpenSSL,
a TLS stack other than the server's), opens an export with NBD_OPT_GO, reads one
block of EXPORT, sends NBD_CMD_DISC and reads on: a clean end of the TLS session reads as b"", a
connection closed without close_notify raises ssl.SSLError (unexpected EOF).
"""
import socket
import ssl
import struct
import sys

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
OPT_STARTTLS, OPT_GO = 5, 7
REP_ACK = 1
REQUEST_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
CMD_READ, CMD_DISC = 0, 2


def exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise SystemExit(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
    while True:
        magic, o, rep, n = struct.unpack(">QIII", exact(s, 20))
        assert magic == REPLY_MAGIC and o == opt, (hex(magic), o)
        exact(s, n)
        if rep == REP_ACK:
            return
        if rep & 0x80000000:
            raise SystemExit(f"option {opt} refused: {rep:#x}")


def main():
    port, cdir, name = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    magic, opt_magic, _flags = struct.unpack(">QQH", exact(raw, 18))
    assert magic == NBDMAGIC and opt_magic == IHAVEOPT
    raw.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    option(raw, OPT_STARTTLS)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # on by default here: a cut must show
    ctx.load_verify_locations(f"{cdir}/ca-cert.pem")
    ctx.load_cert_chain(f"{cdir}/client-cert.pem", f"{cdir}/client-key.pem")
    s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    option(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 512))
    magic, err, cookie = struct.unpack(">IIQ", exact(s, 16))
    assert magic == SIMPLE_REPLY_MAGIC and err == 0 and cookie == 1, (hex(magic), err)
    exact(s, 512)
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 2, 0, 0))
    try:
        rest = s.recv(1)
    except ssl.SSLError as e:
        raise SystemExit(f"the server closed the TLS session without close_notify: {e}")
    if rest:
        raise SystemExit(f"data after NBD_CMD_DISC: {rest!r}")
    print("close_notify received")


main()
