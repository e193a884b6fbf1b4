"""Hostile clients against one server while a well-behaved client keeps writing and verifying
its own region from another thread; after every attack that client must have made progress with
correct data, and the server's memory and descriptors must come back down.

usage: hostile.py URI SERVER_PID HANDSHAKE_TIMEOUT
         (server: -t -e 0 --handshake-timeout N on an image of at least 8 GiB)
       hostile.py URI SERVER_PID HANDSHAKE_TIMEOUT limited SLOTS
         (server: -t -e SLOTS --handshake-timeout N): 2,000 connections that never start the
         handshake queue behind the limit; a newcomer waits (the limit holds), and gets in once
         they leave; then 4 stallers per free slot: the newcomer gets in after the handshake
         timeout has dropped them, without anybody leaving.

Memory bounds checked (VmRSS of the server, from /proc/PID/status):
  * a connection stalled in the handshake costs under 48 KiB (2,000 of them under 96 MiB);
  * one announcing a 32 MiB option payload and sending nothing costs the same (the payload
    buffer grows only with bytes received);
  * after every attack the RSS is back within 64 MiB of where it started.
"""
import os
import resource
import select
import socket
import struct
import threading
import time

from nbdtest import (CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_READ, CMD_TRIM, CMD_WRITE,
                     CMD_WRITE_ZEROES, IHAVEOPT, OPT_GO, REQUEST_MAGIC, Raw, check, check_eq,
                     connect, fail, log, main, pattern)

M = 1 << 20
G = 1 << 30
GOOD_BASE = 7 * G  # the well-behaved client's region; attacks stay below it
EINVAL, ENOSPC, EOVERFLOW = 22, 28, 75


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    fail(f"no {key} in /proc/{pid}/status")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Good(threading.Thread):
    """Writes a fresh pattern to one of 8 blocks, reads it back, checks; forever until stop."""

    def __init__(self, uri):
        super().__init__(daemon=True)
        self.h = connect(uri)
        self.ops = 0
        self.errors = []
        self.done = threading.Event()

    def run(self):
        i = 0
        try:
            while not self.done.is_set():
                off = GOOD_BASE + (i % 8) * 256 * 1024
                data = pattern(256 * 1024, 1000 + i)
                self.h.pwrite(data, off)
                if self.h.pread(len(data), off) != data:
                    self.errors.append(f"wrong data at {off} (round {i})")
                    return
                i += 1
                self.ops = i
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"{type(e).__name__}: {e}")

    def still_fine(self, what, min_ops=1):
        start, end = self.ops, time.monotonic() + 30
        while self.ops < start + min_ops and not self.errors and time.monotonic() < end:
            time.sleep(0.02)
        check(not self.errors, f"well-behaved client without errors after {what}: {self.errors[:1]}")
        check(self.ops >= start + min_ops, f"well-behaved client made progress after {what} ({self.ops} ops)")


def stall_many(uri, n, opt_len=None):
    """n connections that read the greeting and then stall; with opt_len, each also sends the
    client flags and an option header announcing opt_len payload bytes it never sends."""
    host, port = uri[len("nbd://"):].split("/")[0].rsplit(":", 1)
    socks, got, poll = {}, {}, select.poll()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        socks[s.fileno()] = s
        got[s.fileno()] = b""
        poll.register(s, select.POLLIN)
    pending = set(socks)
    end = time.monotonic() + 60
    while pending and time.monotonic() < end:
        for fd, _ in poll.poll(1000):
            s = socks[fd]
            try:
                chunk = s.recv(18 - len(got[fd]))
            except OSError:
                chunk = b""
            got[fd] += chunk
            if not chunk or len(got[fd]) == 18:
                pending.discard(fd)
                poll.unregister(fd)
                if chunk and opt_len is not None:
                    s.send(struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, 0x4242, opt_len))
    greeted = sum(1 for fd in socks if len(got[fd]) == 18)
    return list(socks.values()), greeted


def wait_closed(socks, secs):
    """How many of socks the server closed within secs."""
    by_fd = {s.fileno(): s for s in socks}
    poll = select.poll()
    for s in socks:
        poll.register(s, select.POLLIN)
    open_ = set(by_fd)
    end = time.monotonic() + secs
    while open_ and time.monotonic() < end:
        for fd, _ in poll.poll(500):
            try:
                eof = not by_fd[fd].recv(4096)
            except OSError:
                eof = True
            if eof:
                open_.discard(fd)
                poll.unregister(fd)
    return len(socks) - len(open_)


def settle(pid, base_rss, base_fds, what):
    end = time.monotonic() + 20
    while time.monotonic() < end:
        rss, n = status_kb(pid, "VmRSS"), fds(pid)
        if rss < base_rss + 64 * 1024 and n <= base_fds:
            break
        time.sleep(0.2)
    log(f"after {what}: RSS {rss} kB (start {base_rss} kB), {n} descriptors (start {base_fds})")
    check(n <= base_fds, f"descriptors back to {base_fds} after {what}")
    check(rss < base_rss + 64 * 1024, f"RSS back within 64 MiB of the start after {what}")


def stalled_handshakes(uri, pid, timeout, good, base):
    for n, opt_len, what in ((2000, None, "2000 handshakes stalled after the greeting"),
                             (300, 32 * M, "300 handshakes announcing a 32 MiB option payload")):
        before = status_kb(pid, "VmRSS")
        t = time.monotonic()
        socks, greeted = stall_many(uri, n, opt_len)
        check(greeted == n, f"{what}: all {n} got the greeting ({greeted})")
        time.sleep(0.3)
        peak = status_kb(pid, "VmRSS")
        per = (peak - before) * 1024 // n
        log(f"{what}: RSS {before} -> {peak} kB, {per} bytes per connection")
        check(per < 48 * 1024, f"{what}: under 48 KiB of server memory each")
        good.still_fine(what)
        closed = wait_closed(socks, timeout + 15)
        took = time.monotonic() - t
        check(closed == n, f"{what}: all dropped by the handshake timeout ({closed}, {took:.1f} s)")
        for s in socks:
            s.close()
        settle(pid, *base, what)


def expect_reply(r, cookie, err, what, read_len=0):
    kind, got_cookie, code, flags, data = r.reply(read_len)
    if kind == "structured":  # an error chunk: type has bit 15, payload starts with the error
        code = struct.unpack(">I", data[:4])[0] if code & 0x8000 else 0
    check(got_cookie == cookie and code == err, f"{what}: error {code}, expected {err}")


def huge_lengths(uri, pid, good):
    """4 GiB lengths on every command: refused or served, and the connection stays usable. A
    zero write or trim of 4 GiB (allowed, no payload) costs the server under 64 MiB."""
    r = Raw(uri, timeout=120)
    r.handshake(structured=False)
    big = 0xFFFFFFFF
    cases = [
        (CMD_READ, 0, big, 0, EINVAL, "READ of 4 GiB - 1"),
        (CMD_READ, 5 * G, big, 0, EINVAL, "READ of 4 GiB - 1 past the end"),
        (CMD_TRIM, 6 * G, big, 0, EINVAL, "TRIM of 4 GiB - 1 past the end"),
        (CMD_WRITE_ZEROES, 6 * G, big, 0, ENOSPC, "WRITE_ZEROES of 4 GiB - 1 past the end"),
        (CMD_TRIM, 0, 0xFFFFF000, 0, 0, "TRIM of 4 GiB - 4 KiB"),
        (CMD_WRITE_ZEROES, 0, 0xFFFFF000, 0, 0, "WRITE_ZEROES of 4 GiB - 4 KiB"),
        (CMD_CACHE, 0, 0xFFFFF000, 0, 0, "CACHE of 4 GiB - 4 KiB"),
        (CMD_BLOCK_STATUS, 0, big, 0, EINVAL, "BLOCK_STATUS without a context"),
        (9, 0, big, 0, EINVAL, "unknown command 9 with a 4 GiB length"),
        (0xFFFF, 0, big, 0xFFFF, EINVAL, "command 0xffff with every flag set"),
        (CMD_READ, 0, 4096, 0x8000, EINVAL, "READ with unknown flag 0x8000"),
    ]
    marker = pattern(4096, 77)
    for i, (cmd, off, ln, flags, err, what) in enumerate(cases):
        before, t = status_kb(pid, "VmRSS"), time.monotonic()
        r.request(cmd, off, ln, cookie=100 + i, flags=flags)
        expect_reply(r, 100 + i, err, what)
        grew = status_kb(pid, "VmRSS") - before
        log(f"{what}: {time.monotonic() - t:.1f} s, server RSS {grew:+} kB")
        check(grew < 64 * 1024, f"... the server's RSS grew by less than 64 MiB")
        r.request(CMD_WRITE, 5 * G, 4096, cookie=200 + i, payload=marker)
        expect_reply(r, 200 + i, 0, f"... then a WRITE on the same connection")
        r.request(CMD_READ, 5 * G, 4096, cookie=300 + i)
        _, _, code, _, data = r.reply(4096)
        check(code == 0 and data == marker, "... and a READ returning it")
    good.still_fine("4 GiB lengths")
    r.close()

    # DF on a READ of 4 GiB - 1: EOVERFLOW (structured replies).
    r = Raw(uri, timeout=60)
    r.handshake(structured=True)
    r.request(CMD_READ, 0, big, cookie=7, flags=4)
    expect_reply(r, 7, EOVERFLOW, "READ of 4 GiB - 1 with DF")
    r.request(CMD_READ, 0, 65536, cookie=8)
    kind, cookie, rtype, fl, _ = r.reply()
    while not fl & 1:
        kind, cookie, rtype, fl, _ = r.reply()
    check(cookie == 8, "... then a READ on the same connection")
    r.close()


def write_64m(uri, good):
    """WRITE announcing 64 MiB: NBD_EINVAL for it, then the server closes without reading it."""
    r = Raw(uri, timeout=30)
    r.handshake(structured=False)
    r.request(CMD_WRITE, 0, 64 * M, cookie=9)
    sent, chunk = 0, bytes(M)
    r.s.settimeout(15)
    try:
        while sent < 64 * M:
            sent += r.s.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except socket.timeout:
        fail(f"64 MiB WRITE: the server neither read nor closed ({sent >> 20} MiB sent)")
    check(sent < 64 * M, f"64 MiB WRITE: payload not read ({sent >> 20} MiB accepted by the kernel)")
    try:
        expect_reply(r, 9, EINVAL, "64 MiB WRITE refused")
    except (EOFError, ConnectionResetError) as e:
        fail(f"64 MiB WRITE: no NBD_EINVAL reply before the close ({e})")
    check(r.closed_by_peer(10), "64 MiB WRITE: connection closed after the reply")
    r.close()
    good.still_fine("a 64 MiB WRITE")


def cut_connections(uri, good):
    """Clients that vanish mid-payload and mid-reply (reset, with the server still busy)."""
    for i in range(10):
        r = Raw(uri, timeout=30)
        r.handshake(structured=bool(i % 2))
        r.request(CMD_WRITE, 1 * G, 32 * M, cookie=1)
        r.send(b"\xee" * (16 * M))
        r.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.close()
    good.still_fine("10 clients reset halfway through a 32 MiB WRITE payload")
    h = connect(uri)
    check_eq(h.pread(M, 1 * G + 15 * M), bytes(M), "a WRITE cut mid-payload wrote nothing")
    for i in range(2):  # data, so that structured replies carry data too (not one hole chunk)
        h.pwrite(pattern(32 * M, i), 2 * G + i * 32 * M)
    for i in range(10):
        r = Raw(uri, timeout=30)
        r.handshake(structured=bool(i % 2))
        for c in range(16):
            r.request(CMD_READ, 2 * G + (c % 2) * 32 * M, 32 * M, cookie=c)
        r.recv_exact(100 * 1024)
        r.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.close()
    good.still_fine("10 clients reset in the middle of 16 x 32 MiB of READ replies")
    h.shutdown()


def disc_in_flight(uri, good):
    """NBD_CMD_DISC right behind 64 WRITEs: every WRITE is served and answered, then the close."""
    r = Raw(uri, timeout=60)
    r.handshake(structured=False)
    blob = b""
    for i in range(64):
        blob += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 500 + i, 3 * G + i * 256 * 1024,
                            256 * 1024) + b"\x5a" * (256 * 1024)
    blob += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 999, 0, 0)
    r.send(blob)
    cookies = set()
    try:
        for _ in range(64):
            err, cookie = r.simple_reply()
            check_raw = err == 0
            if not check_raw:
                fail(f"WRITE {cookie} before DISC failed with {err}")
            cookies.add(cookie)
    except EOFError as e:
        fail(f"connection closed before every WRITE ahead of DISC was answered: {len(cookies)} of 64 ({e})")
    check(cookies == set(range(500, 564)), "all 64 WRITEs ahead of NBD_CMD_DISC answered")
    check(r.closed_by_peer(10), "then the server closed the connection")
    r.close()
    h = connect(uri)
    check_eq(h.pread(16 * M, 3 * G), b"\x5a" * (16 * M), "the 64 WRITEs read back on a new connection")
    h.shutdown()
    good.still_fine("DISC with requests in flight")


def oversized_options(uri, good):
    # 1 MiB payload on NBD_OPT_GO, sent in full: refused (too big), the handshake goes on.
    r = Raw(uri, timeout=30)
    r.greeting()
    r.client_flags(3)
    r.option(OPT_GO, b"\0" * M)
    _, rtype, _ = r.option_reply()
    check(rtype & 0x80000000, f"1 MiB NBD_OPT_GO payload refused with an error reply ({rtype:#x})")
    e = r.export.encode()
    r.option(OPT_GO, struct.pack(">I", len(e)) + e + struct.pack(">H", 0))
    check(r.option_replies()[-1][0] == 1, "... and a proper NBD_OPT_GO after it succeeds")
    r.close()
    # 64 MiB announced: dropped without the server reading it.
    r = Raw(uri, timeout=30)
    r.greeting()
    r.client_flags(3)
    r.option(0x4242, b"")  # unknown option, no payload: ERR_UNSUP, connection kept
    check(r.option_reply()[1] == 2**31 + 1, "unknown option refused with NBD_REP_ERR_UNSUP")
    r.send(struct.pack(">QII", IHAVEOPT, 0x4242, 64 * M))
    sent = 0
    r.s.settimeout(15)
    try:
        while sent < 64 * M:
            sent += r.s.send(bytes(M))
    except (BrokenPipeError, ConnectionResetError):
        pass
    except socket.timeout:
        fail("64 MiB option payload: the server neither read nor closed")
    check(sent < 64 * M, f"64 MiB option payload: dropped unread ({sent >> 20} MiB accepted by the kernel)")
    r.close()
    # Wrong magic in a request that is otherwise well formed: dropped.
    r = Raw(uri)
    r.handshake(structured=False)
    r.send(struct.pack(">IHHQQI", REQUEST_MAGIC ^ 1, 0, CMD_READ, 1, 0, 4096))
    check(r.closed_by_peer(10), "a request with a wrong magic: dropped")
    r.close()
    good.still_fine("oversized options and a wrong request magic")


def connect_many(uri, n):
    """n TCP connections (accepted by the kernel, maybe not yet by the server), nothing sent."""
    host, port = uri[len("nbd://"):].split("/")[0].rsplit(":", 1)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        socks.append(s)
    poll = select.poll()
    for s in socks:
        poll.register(s, select.POLLOUT)
    left, end = len(socks), time.monotonic() + 30
    while left and time.monotonic() < end:
        for fd, _ in poll.poll(500):
            poll.unregister(fd)
            left -= 1
    check(left == 0, f"{n} TCP connections established ({n - left})")
    return socks


class Newcomer(threading.Thread):
    def __init__(self, uri):
        super().__init__(daemon=True)
        self.uri, self.connected, self.error = uri, None, None

    def run(self):
        try:
            h = connect(self.uri)
            self.connected = time.monotonic()
            # Past the well-behaved client's 2 MiB, which it rewrites all the time.
            off = GOOD_BASE + 4 * 1024 * 1024
            check_eq(h.pread(4096, off), h.pread(4096, off), "newcomer reads")
            h.shutdown()
        except Exception as e:  # noqa: BLE001
            self.error = e


def run_limited(uri, pid, timeout, slots):
    good = Good(uri)
    good.start()
    good.still_fine("starting", min_ops=3)
    base_fds = fds(pid)
    socks = connect_many(uri, 2000)
    t = time.monotonic()
    newcomer = Newcomer(uri)
    newcomer.start()
    time.sleep(3)
    n = fds(pid)
    log(f"server descriptors with 2000 connections queued: {n} (idle: {base_fds}, -e {slots})")
    check(n <= base_fds + slots, f"the server holds at most -e {slots} clients at once")
    check(newcomer.connected is None and newcomer.error is None,
          "a newcomer queued behind 2000 silent connections waits (the -e limit holds)")
    good.still_fine("2000 silent connections queued behind -e")
    for s in socks:
        s.close()
    t = time.monotonic()
    newcomer.join(60)
    check(newcomer.error is None, f"newcomer without errors ({newcomer.error})")
    check(newcomer.connected is not None, "the newcomer got in once the silent connections left")
    log(f"newcomer in {newcomer.connected - t:.1f} s after 2000 connections left")
    good.still_fine("2000 connections left the queue")

    # Stallers that never leave: the handshake timeout frees their slots.
    stallers = connect_many(uri, 4 * (slots - 1))
    t = time.monotonic()
    newcomer = Newcomer(uri)
    newcomer.start()
    newcomer.join(4 * timeout + 30)
    check(newcomer.error is None and newcomer.connected is not None,
          f"newcomer behind {len(stallers)} stallers got in ({newcomer.error})")
    took = newcomer.connected - t
    log(f"newcomer in {took:.1f} s behind {len(stallers)} stallers, {slots - 1} free slots, timeout {timeout} s")
    check(took >= 3 * timeout - 0.5, "... only after the stallers ahead were dropped")
    check(took <= 4 * timeout + 10, "... as soon as the handshake timeout dropped them")
    check(wait_closed(stallers, timeout + 10) == len(stallers), "every staller was dropped")
    for s in stallers:
        s.close()
    good.still_fine("stallers behind -e")
    good.done.set()
    good.join(30)
    check(not good.errors, f"well-behaved client: {good.ops} verified rounds, no errors")
    good.h.shutdown()


def run(argv):
    uri, pid, timeout = argv[0], int(argv[1]), float(argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if len(argv) > 3 and argv[3] == "limited":
        return run_limited(uri, pid, timeout, int(argv[4]))
    good = Good(uri)
    good.start()
    good.still_fine("starting", min_ops=3)
    base = (status_kb(pid, "VmRSS"), fds(pid))
    log(f"server at the start: RSS {base[0]} kB, {base[1]} descriptors")
    stalled_handshakes(uri, pid, timeout, good, base)
    oversized_options(uri, good)
    huge_lengths(uri, pid, good)
    settle(pid, *base, "4 GiB lengths")
    write_64m(uri, good)
    cut_connections(uri, good)
    settle(pid, *base, "cut connections")
    disc_in_flight(uri, good)
    settle(pid, *base, "every attack")
    log(f"server peak RSS (VmHWM) {status_kb(pid, 'VmHWM')} kB")
    good.done.set()
    good.join(30)
    check(not good.errors, f"well-behaved client: {good.ops} verified write+read rounds, no errors")
    good.h.shutdown()


main(run)
