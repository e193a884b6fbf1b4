"""Error replies, each followed by a valid request on the same connection.

usage: errors.py URI rw|ro|zerolen
  rw: out-of-range (EINVAL/ENOSPC), bad flags (EINVAL), EOVERFLOW, unknown commands, payloads of
      refused WRITEs consumed, BLOCK_STATUS without a context, 32 MiB requests.
  ro: the export was started with -r: writes get EPERM, reads work.
  zerolen: BLOCK_STATUS with length 0.
"""
import struct

import nbd
from nbdtest import (CMD_BLOCK_STATUS, CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES, CMD_TRIM, Raw,
                     REPLY_TYPE_BLOCK_STATUS,
                     check, check_eq, connect, expect_error, log, main, pattern)

M = 1 << 20


def survives(h, data, what):
    """A valid request right after an error."""
    got = h.pread(len(data), 0)
    if got != data:
        raise AssertionError(f"connection corrupted after {what}")
    log(f"ok:   connection still works after {what}")


def run_rw(uri):
    h = connect(uri, strict=0, contexts=["base:allocation"])
    size = h.get_size()
    data = pattern(8192, 3)
    h.pwrite(data, 0)

    cases = [
        ("READ past the end", "EINVAL", h.pread, 8192, size - 4096),
        ("READ starting past the end", "EINVAL", h.pread, 1, size + 4096),
        ("READ at offset 2^63", "EINVAL", h.pread, 512, 1 << 63),
        ("READ whose end wraps around 2^64", "EINVAL", h.pread, 8192, (1 << 64) - 4096),
        ("WRITE past the end", "ENOSPC", h.pwrite, pattern(8192, 4), size - 4096),
        ("WRITE starting past the end", "ENOSPC", h.pwrite, b"x" * 512, size + 512),
        ("WRITE_ZEROES past the end", "ENOSPC", h.zero, 8192, size - 4096),
        ("TRIM past the end", "EINVAL", h.trim, 8192, size - 4096),
        ("CACHE past the end", "EINVAL", h.cache, 8192, size - 4096),
        ("BLOCK_STATUS past the end", "EINVAL", h.block_status, 8192, size + 4096, lambda *a: 0),
        ("READ with an unknown flag", "EINVAL", h.pread, 512, 0, 1 << 9),
        ("READ with NO_HOLE", "EINVAL", h.pread, 512, 0, nbd.CMD_FLAG_NO_HOLE),
        ("READ with REQ_ONE", "EINVAL", h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE),
        ("READ with FAST_ZERO", "EINVAL", h.pread, 512, 0, nbd.CMD_FLAG_FAST_ZERO),
        ("WRITE with DF", "EINVAL", h.pwrite, data, 0, nbd.CMD_FLAG_DF),
        ("WRITE with NO_HOLE", "EINVAL", h.pwrite, data, 0, nbd.CMD_FLAG_NO_HOLE),
        ("WRITE with an unknown flag", "EINVAL", h.pwrite, data, 0, 1 << 12),
        ("TRIM with FAST_ZERO", "EINVAL", h.trim, 4096, 0, nbd.CMD_FLAG_FAST_ZERO),
        ("BLOCK_STATUS with DF", "EINVAL", h.block_status, 4096, 0, lambda *a: 0, nbd.CMD_FLAG_DF),
        ("READ of 32 MiB + 1 with DF", "EOVERFLOW", h.pread, (32 << 20) + 1, 0, nbd.CMD_FLAG_DF),
        ("READ of 33 MiB", ("EINVAL", "EOVERFLOW"), h.pread, 33 << 20, 0),
    ]
    for what, err, fn, *args in cases:
        expect_error(what, err, fn, *args)
        survives(h, data, what)

    # Nothing was written by the refused requests.
    check_eq(h.pread(4096, size - 4096), bytes(4096), "refused WRITEs left the last block alone")
    check_eq(h.pread(8192, 0), data, "refused WRITE with flags did not write")

    # Zero-length requests: any reply, but the connection must survive.
    for what, fn, args in (("zero-length READ", h.pread, (0, 0)), ("zero-length WRITE", h.pwrite, (b"", 0)),
                           ("zero-length TRIM", h.trim, (0, 0)), ("zero-length WRITE_ZEROES", h.zero, (0, 0)),
        ("zero-length CACHE", h.cache, (0, 0)), ("zero-length READ at the end", h.pread, (0, size))):
        try:
            fn(*args)
            log(f"ok: {what} accepted")
        except nbd.Error as e:
            log(f"ok: {what} refused with {e.errno}")
        survives(h, data, what)

    # 32 MiB (the advertised maximum) reads and writes, structured and simple.
    big = pattern(32 << 20, 11)
    h.pwrite(big, 16 * M)
    check_eq(h.pread(32 << 20, 16 * M), big, "32 MiB WRITE then READ (structured)")
    check_eq(bytes(h.pread(32 << 20, 16 * M, nbd.CMD_FLAG_DF)), big, "32 MiB READ with DF")
    h2 = connect(uri, structured=False)
    check_eq(h2.pread(32 << 20, 16 * M), big, "32 MiB READ (simple replies)")
    big2 = pattern(32 << 20, 12)
    h2.pwrite(big2, 32 * M, nbd.CMD_FLAG_FUA)
    check_eq(h.pread(32 << 20, 32 * M), big2, "32 MiB WRITE+FUA over simple replies, read on another connection")
    h2.shutdown()
    h.shutdown()

    # What libnbd will not send: raw requests.
    r = Raw(uri)
    r.handshake(structured=True)
    ok_read = lambda cookie: (r.request(CMD_READ, 0, 512, cookie=cookie), r.reply(512))[1]

    def expect_simple(what, want_err, cookie):
        """An error reply: simple, or a structured error chunk (READ/BLOCK_STATUS)."""
        kind, c, code, flags, payload = r.reply()
        if kind == "structured":
            check(code & 0x8000 and flags & 1, f"{what}: structured error chunk with DONE")
            code = struct.unpack(">I", payload[:4])[0]
        check_eq((c, code), (cookie, want_err), what)

    # Unknown command: EINVAL (22), then a READ works.
    r.request(42, 0, 0, cookie=100)
    expect_simple("unknown command type -> EINVAL", 22, 100)
    # A refused WRITE's payload is consumed: a READ right behind it is parsed correctly.
    r.request(CMD_WRITE, 0, 4096, cookie=101, flags=1 << 13, payload=b"\xee" * 4096)
    expect_simple("WRITE with an unknown flag -> EINVAL, payload skipped", 22, 101)
    r.request(CMD_WRITE, size - 512, 4096, cookie=102, payload=b"\xee" * 4096)
    expect_simple("WRITE past the end -> ENOSPC, payload skipped", 28, 102)
    kind, c, rtype, flags, payload = ok_read(103)
    check_eq((c, payload[8:8 + 512] if kind == "structured" else payload), (103, data[:512]),
             "READ after refused WRITEs parsed correctly")
    # FLUSH with an offset or length: EINVAL.
    r.request(CMD_FLUSH, 4096, 0, cookie=104)
    expect_simple("FLUSH with an offset -> EINVAL", 22, 104)
    # BLOCK_STATUS with no context selected: EINVAL.
    r.request(CMD_BLOCK_STATUS, 0, 4096, cookie=105)
    expect_simple("BLOCK_STATUS without a selected context -> EINVAL", 22, 105)
    # WRITE_ZEROES with DF: EINVAL.
    r.request(CMD_WRITE_ZEROES, 0, 4096, cookie=106, flags=nbd.CMD_FLAG_DF)
    expect_simple("WRITE_ZEROES with DF -> EINVAL", 22, 106)
    kind, c, rtype, flags, payload = ok_read(107)
    check_eq(c, 107, "READ still answered at the end")
    r.close()

    # Simple replies: BLOCK_STATUS and DF are refused too.
    r = Raw(uri)
    r.handshake(structured=False)
    r.request(CMD_BLOCK_STATUS, 0, 4096, cookie=200)
    check_eq(r.simple_reply(), (22, 200), "BLOCK_STATUS without structured replies -> EINVAL")
    r.request(CMD_READ, 0, 512, cookie=201, flags=nbd.CMD_FLAG_DF)
    check_eq(r.simple_reply(), (22, 201), "DF without structured replies -> EINVAL")
    r.request(CMD_READ, 0, 512, cookie=202)
    check_eq(r.simple_reply(), (0, 202), "READ after them")
    check_eq(r.recv_exact(512), data[:512], "READ data after them")
    r.close()


def zero_length_block_status(uri):
    """BLOCK_STATUS with length 0: an error reply, or a chunk with at least one descriptor
    (a chunk with none is invalid and makes libnbd drop the connection)."""
    r = Raw(uri)
    size, _, ids = r.handshake(structured=True, contexts=["base:allocation"])
    for cookie, off in ((300, 0), (301, size)):
        r.request(CMD_BLOCK_STATUS, off, 0, cookie=cookie)
        kind, c, rtype, flags, payload = r.reply()
        check_eq(c, cookie, f"zero-length BLOCK_STATUS at {off}: reply cookie")
        if kind == "structured" and rtype == REPLY_TYPE_BLOCK_STATUS:
            check(len(payload) >= 12 and (len(payload) - 4) % 8 == 0,
                  f"zero-length BLOCK_STATUS at {off}: the chunk has at least one descriptor "
                  f"(payload {payload.hex()})")
        else:
            log(f"ok: zero-length BLOCK_STATUS at {off} refused ({kind}, type/error {rtype})")
    r.close()
    h = connect(uri, strict=0, contexts=["base:allocation"])
    data = h.pread(4096, 0)
    try:
        h.block_status(0, 0, lambda *a: 0)
        log("ok: zero-length BLOCK_STATUS accepted by libnbd")
    except nbd.Error as e:
        log(f"zero-length BLOCK_STATUS: {e}")
    survives(h, data, "a zero-length BLOCK_STATUS")
    h.shutdown()


def run_ro(uri):
    h = connect(uri, strict=0)
    check(h.is_read_only(), "export is read-only")
    check(not h.can_trim() and not h.can_zero(), "TRIM and WRITE_ZEROES not advertised read-only")
    data = h.pread(8192, 0)
    for what, fn, args in (("WRITE", h.pwrite, (b"y" * 4096, 0)), ("WRITE+FUA", h.pwrite, (b"y" * 4096, 0, nbd.CMD_FLAG_FUA)),
                           ("WRITE_ZEROES", h.zero, (4096, 0)), ("TRIM", h.trim, (4096, 0))):
        expect_error(f"{what} on a read-only export", "EPERM", fn, *args)
        survives(h, data, what)
    check_eq(h.pread(8192, 0), data, "read-only data unchanged")
    h.flush()
    log("ok: FLUSH on a read-only export")
    h.shutdown()


def run(argv):
    uri, mode = argv
    {"rw": run_rw, "ro": run_ro, "zerolen": zero_length_block_status}[mode](uri)


main(run)
