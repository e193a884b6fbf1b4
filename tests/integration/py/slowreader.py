"""A client that sends thousands of READ requests and never reads the replies: the server stops
reading its requests (bounded memory) and keeps serving everybody else; when that client
disconnects everything is released.

usage: slowreader.py URI SERVER_PID
"""
import socket
import time

import nbd
from nbdtest import CMD_READ, CMD_WRITE, Raw, check, check_eq, connect, log, main, pattern

M = 1 << 20


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(argv):
    uri, pid = argv[0], int(argv[1])
    other = connect(uri)
    data = pattern(M, 8)
    other.pwrite(data, 0)
    base = rss_kb(pid)

    stuck = []
    for structured in (False, True):
        r = Raw(uri)
        r.handshake(structured=structured)
        r.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        r.s.settimeout(3)
        sent = 0
        try:
            for i in range(4000):
                r.request(CMD_READ, (i % 48) * M, M, cookie=i)
                sent += 1
            # Also WRITEs with payloads, which the server must stop reading at some point.
            for i in range(400):
                r.request(CMD_WRITE, 40 * M + (i % 16) * M, M, cookie=10000 + i, payload=bytes(M))
                sent += 1
        except socket.timeout:
            pass
        log(f"{'structured' if structured else 'simple'}: {sent} requests accepted before the server stopped reading")
        check(sent < 4400, "the server stops reading requests from a client that does not read replies")
        stuck.append(r)
        t = time.monotonic()
        check_eq(other.pread(M, 0), data, "another client is served meanwhile")
        check(time.monotonic() - t < 5, "... promptly")
    peak = rss_kb(pid)
    log(f"server RSS {base} kB before, {peak} kB with two stuck clients")
    check(peak - base < 1_500_000, "server memory stays bounded (< 1.5 GB more)")
    for r in stuck:
        r.close()
    time.sleep(1)
    check_eq(other.pread(M, 0), data, "served after the stuck clients left")
    fresh = connect(uri)
    fresh.pwrite(data, 8 * M)
    check_eq(fresh.pread(M, 8 * M), data, "a new client works")
    fresh.shutdown()
    other.shutdown()


main(run)
