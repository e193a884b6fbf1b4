"""A WRITE announcing more than 32 MiB closes that connection without the server reading the
payload, and the server keeps serving other clients (one already connected, one new).

usage: oversize.py URI      (server started with -e 0 or -e >= 3)
"""
import socket
import time

import nbd
from nbdtest import CMD_WRITE, Raw, check, check_eq, connect, fail, log, main, pattern

M = 1 << 20


def run(argv):
    uri = argv[0]
    other = connect(uri)
    data = pattern(M, 5)
    other.pwrite(data, 0)

    # Raw client: header for a ~4 GiB WRITE, then stream data until the server hangs up.
    r = Raw(uri)
    r.handshake(structured=True)
    r.request(CMD_WRITE, 0, 0xFFFFF000, cookie=1)
    chunk = bytes(M)
    sent = 0
    r.s.settimeout(15)
    start = time.monotonic()
    closed = False
    try:
        while sent < 512 * M:
            sent += r.s.send(chunk)
    except (BrokenPipeError, ConnectionResetError) as e:
        closed = True
        log(f"send failed after {sent >> 20} MiB: {e}")
    except socket.timeout:
        fail(f"server neither read nor closed: send blocked after {sent >> 20} MiB")
    check(closed, f"server closed the connection (sent {sent >> 20} MiB in {time.monotonic() - start:.1f} s)")
    check(sent < 64 * M, "server did not read the oversized payload (< 64 MiB accepted, kernel buffers only)")
    r.close()

    # libnbd with strict mode off: a 33 MiB pwrite kills only its own connection.
    h = connect(uri, strict=0)
    try:
        h.pwrite(pattern(33 * M, 6), 0)
        fail("33 MiB WRITE succeeded")
    except nbd.Error as e:
        log(f"ok: 33 MiB WRITE failed: {e}")
    check(h.aio_is_dead() or h.aio_is_closed(), "the oversized-WRITE connection is gone")

    # Everybody else is fine, and nothing was written.
    check_eq(other.pread(M, 0), data, "the other client still works and its data is intact")
    fresh = connect(uri)
    check_eq(fresh.pread(M, 0), data, "a new client can connect and read")
    fresh.shutdown()
    other.shutdown()


main(run)
