"""-e/--shared: up to N clients are served at once; client N+1 waits (is not served) until one
leaves. With N = 0 many clients are served at once.

usage: shared.py URI N
"""
import time

import nbd
from nbdtest import check, check_eq, connect, main, pattern


def poll_until(h, cond, secs):
    end = time.monotonic() + secs
    while time.monotonic() < end and not cond():
        h.poll(100)
    return cond()


def run(argv):
    uri, n = argv[0], int(argv[1])
    if n == 0:
        hs = [connect(uri) for _ in range(24)]
        for i, h in enumerate(hs):
            h.pwrite(pattern(4096, i), i * 4096)
        for i, h in enumerate(hs):
            check_eq(h.pread(4096, i * 4096), pattern(4096, i), f"client {i} of 24 served at once")
        check(all(h.can_multi_conn() for h in hs), "CAN_MULTI_CONN with -e 0")
        for h in hs:
            h.shutdown()
        return
    hs = [connect(uri) for _ in range(n)]
    for i, h in enumerate(hs):
        h.pwrite(pattern(4096, i), i * 4096)
    check_eq(hs[0].can_multi_conn(), n > 1, f"CAN_MULTI_CONN iff -e {n} > 1")
    extra = nbd.NBD()
    extra.aio_connect_uri(uri)
    check(not poll_until(extra, extra.aio_is_ready, 2.0), f"client {n + 1} not served while {n} are connected")
    check(not extra.aio_is_dead(), f"client {n + 1} is waiting, not refused")
    hs[0].shutdown()
    check(poll_until(extra, extra.aio_is_ready, 15.0), f"client {n + 1} served once a client left")
    check_eq(extra.pread(4096, 0), pattern(4096, 0), "the late client reads the data")
    for h in hs[1:] + [extra]:
        h.shutdown()


main(run)
