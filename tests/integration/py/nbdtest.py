"""Helpers for the integration scripts: libnbd handles, assertions, and a raw NBD client for
what libnbd will not send (garbage, oversized payloads, hand-made handshakes).

Run with /usr/bin/python3 (the libnbd bindings live there), PYTHONPATH pointing here.
"""
import os
import socket
import struct
import sys
import time

import nbd

NAME = os.path.basename(sys.argv[0])


def log(msg):
    print(f"  [{NAME}] {msg}", flush=True)


class TestFailure(Exception):
    pass


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        fail(msg)
    log("ok: " + msg)


def short(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v)
        if len(v) > 32:
            first = next((i for i in range(len(v)) if v[i] != 0), None)
            return f"<{len(v)} bytes, {'all zero' if first is None else f'first nonzero at {first}'}>"
    r = repr(v)
    return r if len(r) <= 200 else r[:200] + "..."


def check_eq(got, want, msg):
    if got != want:
        extra = ""
        if isinstance(got, (bytes, bytearray)) and isinstance(want, (bytes, bytearray)):
            diff = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
            extra = f" (lengths {len(got)}/{len(want)}, first difference at byte {diff})"
        fail(f"{msg}: got {short(got)}, expected {short(want)}{extra}")
    log(f"ok: {msg} ({short(got)})")


def main(fn):
    """Runs fn(argv) and turns failures into a nonzero exit with a message."""
    try:
        fn(sys.argv[1:])
    except TestFailure as e:
        print(f"FAIL [{NAME}]: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except nbd.Error as e:
        print(f"FAIL [{NAME}]: unexpected libnbd error: {e}", file=sys.stderr, flush=True)
        raise
    sys.exit(0)


def connect(uri, structured=True, strict=None, contexts=(), handshake_flags=None, opt_mode=False,
            full_info=False):
    h = nbd.NBD()
    h.set_handle_name(NAME)
    if not structured:
        h.set_request_structured_replies(False)
    if strict is not None:
        h.set_strict_mode(strict)
    for c in contexts:
        h.add_meta_context(c)
    if handshake_flags is not None:
        h.set_handshake_flags(handshake_flags)
    if opt_mode:
        h.set_opt_mode(True)
    if full_info:
        h.set_full_info(True)
    h.connect_uri(uri)
    return h


def expect_error(what, errno_name, fn, *args, **kw):
    """fn(*args) must fail with libnbd error errno_name (a name like 'EINVAL', or a tuple)."""
    names = errno_name if isinstance(errno_name, tuple) else (errno_name,)
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        if e.errno not in names:
            fail(f"{what}: expected {'/'.join(names)}, got {e.errno} ({e.string})")
        log(f"ok: {what} -> {e.errno}")
        return e
    fail(f"{what}: succeeded, expected {'/'.join(names)}")


def pattern(length, seed):
    """Deterministic non-repeating-looking bytes, cheap to make."""
    block = bytes((seed * 131 + i * 7 + (i >> 8) * 13) & 0xFF for i in range(4096))
    tag = struct.pack(">Q", seed)
    out = bytearray()
    n = 0
    while len(out) < length:
        out += tag + struct.pack(">Q", n) + block[16:]
        n += 1
    return bytes(out[:length])


def extents(h, context, offset, length, flags=0):
    """All (length, flags) extents of `context` in [offset, offset+length), asking repeatedly."""
    out = []
    pos = offset
    end = offset + length
    while pos < end:
        got = []

        def cb(meta, off, entries, err):
            if meta == context:
                got.extend(zip(entries[0::2], entries[1::2]))
            return 0

        h.block_status(end - pos, pos, cb, flags)
        if not got:
            fail(f"block status of {context} at {pos}: no extents")
        for ln, st in got:
            if ln == 0:
                fail(f"block status of {context} at {pos}: zero-length extent")
            ln = min(ln, end - pos)
            if out and out[-1][1] == st:
                out[-1] = (out[-1][0] + ln, st)
            else:
                out.append((ln, st))
            pos += ln
            if pos >= end:
                break
    return out


# ---- Raw protocol client -------------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 1, 2, 3, 5, 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_UNKNOWN = 2**31 + 1, 2**31 + 2, 2**31 + 3, 2**31 + 6
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = range(8)
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REPLY_TYPE_BLOCK_STATUS = 0, 1, 2, 5
REPLY_FLAG_DONE = 1


def parse_uri(uri):
    """(family, address) of an nbd:// or nbd+unix:// URI, and the export name."""
    if uri.startswith("nbd+unix://"):
        path = uri.split("socket=", 1)[1]
        name = uri[len("nbd+unix:///"):].split("?", 1)[0]
        return socket.AF_UNIX, path, name
    rest = uri[len("nbd://"):]
    hostport, _, name = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return socket.AF_INET, (host, int(port)), name


class Raw:
    """A hand-driven NBD connection."""

    def __init__(self, uri, timeout=10):
        fam, addr, self.export = parse_uri(uri)
        self.s = socket.socket(fam, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(addr)

    def close(self):
        self.s.close()

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def send(self, data):
        self.s.sendall(data)

    def greeting(self):
        g = self.recv_exact(18)
        magic, opt, flags = struct.unpack(">QQH", g)
        if magic != NBDMAGIC or opt != IHAVEOPT:
            fail(f"bad greeting {g.hex()}")
        return flags

    def client_flags(self, flags=3):
        self.send(struct.pack(">I", flags))

    def option(self, opt, payload=b""):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(payload)) + payload)

    def option_reply(self):
        magic, opt, rtype, ln = struct.unpack(">QIII", self.recv_exact(20))
        if magic != REPLY_MAGIC:
            fail(f"bad option reply magic {magic:#x}")
        return opt, rtype, self.recv_exact(ln)

    def option_replies(self):
        """Replies up to and including ACK or an error."""
        out = []
        while True:
            opt, rtype, data = self.option_reply()
            out.append((rtype, data))
            if rtype == REP_ACK or rtype & 0x80000000:
                return out

    def handshake(self, structured=True, contexts=(), export=None, no_zeroes=True):
        """Fixed newstyle up to transmission with NBD_OPT_GO; returns (size, flags, ctx ids)."""
        export = self.export if export is None else export
        self.greeting()
        self.client_flags(1 | (2 if no_zeroes else 0))
        if structured:
            self.option(OPT_STRUCTURED_REPLY)
            check_raw(self.option_replies()[-1][0] == REP_ACK, "STRUCTURED_REPLY acknowledged")
        ids = {}
        if contexts:
            e = export.encode()
            q = b"".join(struct.pack(">I", len(c)) + c.encode() for c in contexts)
            self.option(OPT_SET_META_CONTEXT, struct.pack(">I", len(e)) + e + struct.pack(">I", len(contexts)) + q)
            for rtype, data in self.option_replies():
                if rtype == REP_META_CONTEXT:
                    ids[data[4:].decode()] = struct.unpack(">I", data[:4])[0]
        e = export.encode()
        self.option(OPT_GO, struct.pack(">I", len(e)) + e + struct.pack(">H", 0))
        size = flags = None
        for rtype, data in self.option_replies():
            if rtype == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
                size, flags = struct.unpack(">QH", data[2:12])
            elif rtype & 0x80000000:
                fail(f"NBD_OPT_GO refused: {rtype:#x} {data!r}")
        return size, flags, ids

    def request(self, cmd, offset, length, cookie=1, flags=0, payload=b""):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload)

    def simple_reply(self):
        magic, err, cookie = struct.unpack(">IIQ", self.recv_exact(16))
        if magic != SIMPLE_REPLY_MAGIC:
            fail(f"expected a simple reply, got magic {magic:#x}")
        return err, cookie

    def reply(self, read_len=0):
        """Next reply, simple or structured: (kind, cookie, error-or-type, flags, payload)."""
        magic = struct.unpack(">I", self.recv_exact(4))[0]
        if magic == SIMPLE_REPLY_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recv_exact(12))
            data = self.recv_exact(read_len) if err == 0 and read_len else b""
            return "simple", cookie, err, REPLY_FLAG_DONE, data
        if magic == STRUCTURED_REPLY_MAGIC:
            flags, rtype, cookie, ln = struct.unpack(">HHQI", self.recv_exact(16))
            return "structured", cookie, rtype, flags, self.recv_exact(ln)
        fail(f"bad reply magic {magic:#x}")

    def closed_by_peer(self, timeout):
        """True when the server closes the connection within `timeout` seconds (data read
        meanwhile is discarded)."""
        self.s.settimeout(timeout)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                if not self.s.recv(65536):
                    return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        return False


def check_raw(cond, msg):
    if not cond:
        fail(msg)
