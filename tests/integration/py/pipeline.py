"""Many requests in flight on one connection, data verified; multi-conn flush semantics.

usage: pipeline.py pipeline URI
       pipeline.py multiconn URI N      (server with -e N or more; N >= 3)
"""
import random

import nbd
import struct

from nbdtest import (CMD_DISC, CMD_READ, CMD_WRITE, REQUEST_MAGIC, Raw, check, check_eq, connect, fail, log, main,
                     pattern)

K64 = 64 << 10
M = 1 << 20


def drain(h, cookies, what):
    """Polls until every command is retired; each must have succeeded."""
    peak = h.aio_in_flight()
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        try:
            if not h.aio_command_completed(c):
                fail(f"{what}: command {c} not completed")
        except nbd.Error as e:
            fail(f"{what}: command {c} failed: {e}")
    return peak


def pipelined(uri, structured):
    label = "structured" if structured else "simple replies"
    h = connect(uri, structured=structured)
    n = 160
    base = (0 if structured else 16) * M
    order = list(range(n))
    random.Random(7).shuffle(order)
    datas = {i: pattern(K64, 1000 + i + (0 if structured else 5000)) for i in range(n)}
    cookies = []
    for i in order:
        buf = nbd.Buffer.from_bytearray(bytearray(datas[i]))
        flags = nbd.CMD_FLAG_FUA if i % 17 == 0 else 0
        cookies.append(h.aio_pwrite(buf, base + i * K64, flags=flags))
        if i % 50 == 0:
            cookies.append(h.aio_flush())
    peak = drain(h, cookies, f"{n} pipelined writes ({label})")
    check(peak >= 64, f"{peak} writes (and flushes) were in flight at once ({label})")

    bufs = {}
    cookies = []
    for i in order:
        bufs[i] = nbd.Buffer(K64)
        cookies.append(h.aio_pread(bufs[i], base + i * K64))
    peak = drain(h, cookies, f"{n} pipelined reads ({label})")
    check(peak >= 64, f"{peak} reads were in flight at once ({label})")
    bad = [i for i in range(n) if bytes(bufs[i].to_bytearray()) != datas[i]]
    check(not bad, f"all {n} pipelined reads returned the data written ({label}); bad: {bad[:5]}")

    # Mixed: reads of what is there, writes elsewhere, zeroes, trims, cache, all in flight.
    cookies = []
    rbufs = []
    for i in range(0, n, 2):
        b = nbd.Buffer(K64)
        rbufs.append((i, b))
        cookies.append(h.aio_pread(b, base + i * K64))
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(datas[i + 1][::-1])), base + (i + 1) * K64))
        if structured:
            cookies.append(h.aio_cache(K64, base + i * K64))
        cookies.append(h.aio_zero(4096, base + (n + i) * K64))
    drain(h, cookies, f"mixed pipeline ({label})")
    for i, b in rbufs:
        if bytes(b.to_bytearray()) != datas[i]:
            fail(f"mixed pipeline: read {i} returned wrong data ({label})")
    got = h.pread(K64 * n, base)
    want = b"".join(datas[i] if i % 2 == 0 else datas[i][::-1] for i in range(n))
    check_eq(got, want, f"contents after the mixed pipeline ({label})")
    h.shutdown()


def big_in_flight(uri):
    """More read bytes in flight than the server holds at once (256 MiB): backpressure, no loss."""
    h = connect(uri)
    size = h.get_size()
    blob = pattern(32 * M, 77)
    h.pwrite(blob, 0)
    bufs = [nbd.Buffer(32 * M) for _ in range(10)]
    cookies = [h.aio_pread(b, 0) for b in bufs]
    drain(h, cookies, "10 x 32 MiB reads in flight")
    check(all(bytes(b.to_bytearray()) == blob for b in bufs), "10 x 32 MiB reads in flight all correct")
    h.shutdown()


def disc_with_requests_in_flight(uri):
    """WRITEs, READs and then NBD_CMD_DISC in one burst: every request is answered (or at least
    every WRITE applied) before the server closes."""
    r = Raw(uri)
    r.handshake(structured=True)
    burst = b""
    n = 40
    for i in range(n):
        burst += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 500 + i, 60 * M + i * K64, K64) + pattern(K64, 700 + i)
    for i in range(n):
        burst += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 600 + i, 60 * M + i * K64, 4096)
    burst += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 999, 0, 0)
    r.send(burst)
    replies = set()
    try:
        while True:
            kind, cookie, code, flags, payload = r.reply(0)
            if kind == "simple" and code != 0:
                fail(f"request {cookie} failed with {code} before DISC")
            if kind == "structured" and code & 0x8000:
                fail(f"request {cookie} failed before DISC")
            if flags & 1:
                replies.add(cookie)
    except EOFError:
        pass
    r.close()
    check_eq(len(replies), 2 * n, "every request sent before NBD_CMD_DISC was answered")
    h = connect(uri)
    want = b"".join(pattern(K64, 700 + i) for i in range(n))
    check_eq(h.pread(n * K64, 60 * M), want, "every WRITE sent before NBD_CMD_DISC landed")
    h.shutdown()


def multiconn(uri, n):
    hs = [connect(uri) for _ in range(n)]
    check(all(h.can_multi_conn() for h in hs), f"CAN_MULTI_CONN on all {n} connections")
    for rnd in range(6):
        a, b, c = random.Random(rnd).sample(range(n), 3)
        data = pattern(M, 300 + rnd)
        off = (40 + rnd) * M
        hs[a].pwrite(data, off)
        hs[b].flush()
        check_eq(hs[c].pread(M, off), data, f"round {rnd}: write on {a}, flush on {b}, read on {c}")
    # Interleaved in-flight writes on all connections, one flush, all read everywhere.
    cookies = []
    for i, h in enumerate(hs):
        cookies.append((h, [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(pattern(K64, 900 + i * 10 + j))),
                                         48 * M + (i * 8 + j) * K64) for j in range(8)]))
    for h, cs in cookies:
        drain(h, cs, "multi-connection writes")
    hs[0].flush()
    want = b"".join(pattern(K64, 900 + i * 10 + j) for i in range(n) for j in range(8))
    for i, h in enumerate(hs):
        check_eq(h.pread(len(want), 48 * M), want, f"connection {i} sees every connection's writes")
    for h in hs:
        h.shutdown()


def run(argv):
    if argv[0] == "pipeline":
        pipelined(argv[1], True)
        pipelined(argv[1], False)
        big_in_flight(argv[1])
        disc_with_requests_in_flight(argv[1])
    else:
        multiconn(argv[1], int(argv[2]))


main(run)
