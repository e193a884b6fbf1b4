"""Misbehaving clients are dropped while a well-behaved client keeps working.

usage: robust.py URI HANDSHAKE_TIMEOUT      (server with -t -e 0 --handshake-timeout N)
"""
import os
import socket
import struct
import threading
import time

from nbdtest import (CMD_READ, IHAVEOPT, OPT_GO, OPT_LIST, REQUEST_MAGIC, Raw, check, check_eq, connect, fail,
                     log, main, pattern)

M = 1 << 20


def run(argv):
    uri, timeout = argv[0], float(argv[1])
    good = connect(uri)
    data = pattern(M, 42)
    good.pwrite(data, 0)

    def still_good(what):
        check_eq(good.pread(M, 0), data, f"well-behaved client still served after {what}")

    # 1. Random bytes right after connecting (instead of the client flags).
    r = Raw(uri)
    r.greeting()
    r.send(os.urandom(4096))
    check(r.closed_by_peer(10), "random bytes instead of client flags: dropped")
    r.close()
    still_good("random bytes in the handshake")

    # 2. Valid flags, then garbage where an option header belongs.
    r = Raw(uri)
    r.greeting()
    r.client_flags(3)
    r.send(b"\x00\x01\x02\x03" * 256)
    check(r.closed_by_peer(10), "garbage option header: dropped")
    r.close()
    still_good("a garbage option header")

    # 3. An option announcing a huge payload it never sends (then hangs up).
    r = Raw(uri)
    r.greeting()
    r.client_flags(3)
    r.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 0xFFFFFFF0))
    check(r.closed_by_peer(10), "option with a 4 GiB payload: dropped without reading it")
    r.close()
    still_good("an option with a 4 GiB payload")

    # 4. Half a handshake, then close.
    for cut in (1, 3, 4, 10, 19):
        r = Raw(uri)
        r.greeting()
        msg = struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, OPT_LIST, 0)
        r.send(msg[:cut])
        r.close()
    time.sleep(0.3)
    still_good("half handshakes")

    # 5. Garbage in the transmission phase: a wrong request magic.
    r = Raw(uri)
    r.handshake(structured=True)
    r.send(os.urandom(28) + os.urandom(1000))
    check(r.closed_by_peer(10), "garbage request in transmission: dropped")
    r.close()
    still_good("a garbage request")

    # 6. A request header cut short, then close; and a valid header with a WRITE payload cut short.
    r = Raw(uri)
    r.handshake(structured=False)
    r.send(struct.pack(">IHHQ", REQUEST_MAGIC, 0, CMD_READ, 5))
    r.close()
    r = Raw(uri)
    r.handshake(structured=False)
    r.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 1, 6, 0, 65536) + b"\xff" * 1000)
    r.close()
    time.sleep(0.3)
    still_good("truncated requests")
    check_eq(good.pread(M, 0), data, "a truncated WRITE wrote nothing")

    # 7. Connect and vanish without a byte; connect and reset.
    for _ in range(5):
        r = Raw(uri)
        r.close()
    r = Raw(uri)
    r.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    r.close()  # RST
    still_good("connect-and-close and reset connections")

    # 8. A client that stalls in the handshake is dropped after the handshake timeout.
    stalls = []
    for what in ("before the client flags", "after the client flags"):
        r = Raw(uri, timeout=timeout + 15)
        start = time.monotonic()
        r.greeting()
        if what == "after the client flags":
            r.client_flags(3)
        t = time.monotonic()
        h = connect(uri)
        check_eq(h.pread(M, 0), data, f"a new client negotiates while another stalls ({what})")
        h.shutdown()
        check(time.monotonic() - t < timeout, "... without waiting for the stalled one")
        closed = r.closed_by_peer(timeout + 10)
        took = time.monotonic() - start
        check(closed, f"stalled client ({what}) dropped")
        check(timeout - 0.5 <= took <= timeout + 5, f"dropped after {took:.1f} s (timeout {timeout} s)")
        r.close()
        stalls.append(took)
    still_good("stalled handshakes")

    # 9. An idle client in transmission is NOT subject to the handshake timeout.
    idle = connect(uri)
    time.sleep(timeout + 1)
    check_eq(idle.pread(M, 0), data, "a client idle longer than the handshake timeout still works")
    idle.shutdown()

    # 10. A burst of clients at once, each verifying data.
    errors = []

    def worker(i):
        try:
            h = connect(uri)
            d = pattern(65536, 500 + i)
            h.pwrite(d, 2 * M + i * 65536)
            if h.pread(65536, 2 * M + i * 65536) != d:
                errors.append(f"client {i}: wrong data")
            h.shutdown()
        except Exception as e:  # noqa: BLE001
            errors.append(f"client {i}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check(not errors, f"16 concurrent clients all served: {errors[:3]}")
    still_good("a burst of clients")
    good.shutdown()


main(run)
