"""Every transmission command and flag through libnbd, data verified.

usage: commands.py URI MODE      MODE: unmap (server --discard=unmap) or ignore (--discard=ignore)

Layout (64 KiB clusters), relied on by commands.sh when it maps the image afterwards:
  [0,1M) seed 1 | [1M,2M) seed 2 (FUA) | [2M,3M) seed 3 then TRIM | [3M,4M) zeroed |
  [4M,5M) zeroed with NO_HOLE | [5M,5M+64K) FAST_ZERO | [6M, 6M+10001) unaligned write |
  [8M, 16M) never written
"""
import nbd
from nbdtest import check, check_eq, connect, expect_error, extents, fail, log, main, pattern

M = 1 << 20
K64 = 64 << 10


def structured_chunks(h, count, offset, flags=0):
    chunks = []

    def cb(subbuf, off, status, err):
        chunks.append((off, len(subbuf), status, bytes(subbuf)))
        return 0

    buf = h.pread_structured(count, offset, cb, flags)
    return bytes(buf), sorted(chunks)


def run(argv):
    uri, mode = argv[0], argv[1]
    unmap = mode == "unmap"
    h = connect(uri, contexts=["base:allocation"])
    size = h.get_size()
    check(h.can_fua() and h.can_flush() and h.can_trim() and h.can_zero() and h.can_fast_zero()
          and h.can_cache() and h.can_df(), "all commands advertised")

    # WRITE, WRITE+FUA, READ.
    d1, d2, d3, d4, d5, d6 = (pattern(M, s) for s in range(1, 7))
    h.pwrite(d1, 0)
    h.pwrite(d2, M, nbd.CMD_FLAG_FUA)
    check_eq(h.pread(2 * M, 0), d1 + d2, "WRITE and WRITE+FUA read back")
    # FLUSH.
    h.flush()
    log("ok: FLUSH")

    # TRIM.
    h.pwrite(d3, 2 * M)
    h.trim(M, 2 * M)
    got = h.pread(M, 2 * M)
    if unmap:
        check_eq(got, bytes(M), "TRIM with --discard=unmap: whole clusters read as zeros")
    else:
        check_eq(got, d3, "TRIM with --discard=ignore: data unchanged")
    h.trim(4096, 2 * M + 100, nbd.CMD_FLAG_FUA)
    log("ok: TRIM+FUA of a partial cluster")

    # WRITE_ZEROES, default flags (may punch), and with NO_HOLE.
    h.pwrite(d4, 3 * M)
    h.zero(M, 3 * M)
    check_eq(h.pread(M, 3 * M), bytes(M), "WRITE_ZEROES reads zeros")
    h.pwrite(d5, 4 * M)
    h.zero(M, 4 * M, nbd.CMD_FLAG_NO_HOLE)
    check_eq(h.pread(M, 4 * M), bytes(M), "WRITE_ZEROES+NO_HOLE reads zeros")
    # Partial-cluster zeroing, both flags.
    h.pwrite(d6[:K64], 5 * M + K64)
    h.zero(1000, 5 * M + K64 + 10, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
    want = d6[:10] + bytes(1000) + d6[1010:K64]
    check_eq(h.pread(K64, 5 * M + K64) == want, True, "partial WRITE_ZEROES+NO_HOLE+FUA")

    # FAST_ZERO: may fail with ENOTSUP (never EINVAL) and then must not have changed anything;
    # zeroing whole clusters in qcow2 is a metadata change and must succeed.
    h.pwrite(d6[:K64], 5 * M)
    try:
        h.zero(4096, 5 * M + 512, nbd.CMD_FLAG_FAST_ZERO)
        check_eq(h.pread(K64, 5 * M), d6[:512] + bytes(4096) + d6[512 + 4096:K64], "partial FAST_ZERO applied")
    except nbd.Error as e:
        if e.errno != "ENOTSUP":
            fail(f"partial FAST_ZERO failed with {e.errno}, expected success or ENOTSUP")
        check_eq(h.pread(K64, 5 * M), d6[:K64], "failed FAST_ZERO left the data alone")
    h.zero(K64, 5 * M, nbd.CMD_FLAG_FAST_ZERO)
    check_eq(h.pread(K64, 5 * M), bytes(K64), "FAST_ZERO of a whole cluster")
    h.zero(K64 * 2, 5 * M + 2 * K64, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
    log("ok: FAST_ZERO+NO_HOLE of whole clusters")

    # Unaligned write and reads across its edges.
    odd = pattern(10001, 9)
    h.pwrite(odd, 6 * M + 1)
    check_eq(h.pread(10001, 6 * M + 1), odd, "unaligned WRITE read back")
    check_eq(h.pread(10003, 6 * M), b"\0" + odd + b"\0", "READ around an unaligned write")
    # The last byte of the export.
    h.pwrite(b"\xaa", size - 1)
    check_eq(h.pread(3, size - 3), b"\0\0\xaa", "last byte of the export")

    # CACHE.
    h.cache(8 * M, 0)
    for off in range(0, size, 32 * M):
        h.cache(min(32 * M, size - off), off)
    h.cache(1, size - 1)
    log("ok: CACHE (ranges, whole export in 32M pieces, last byte)")

    # READ: structured chunks. A range with data and a never-written hole.
    data, chunks = structured_chunks(h, 2 * M, 7 * M)
    check_eq(data, bytes(2 * M), "structured READ of a hole")
    check(any(st == nbd.READ_HOLE for _, _, st, _ in chunks), "READ of an unallocated range sends a hole chunk")
    data, chunks = structured_chunks(h, 2 * M, M)
    check_eq(data, d2 + d3 if not unmap else d2 + bytes(M), "structured READ of data (+trimmed range)")
    pos = M
    for off, ln, st, _ in chunks:
        if off != pos:
            fail(f"structured READ chunks not contiguous: {chunks[:3]}")
        pos += ln
    check_eq(pos, 3 * M, "structured READ chunks cover the request")
    # DF: one data chunk, holes included.
    data, chunks = structured_chunks(h, 8 * M, 0, nbd.CMD_FLAG_DF)
    check_eq(len(chunks), 1, "READ with DF is one chunk")
    check_eq(chunks[0][2], nbd.READ_DATA, "READ with DF is a data chunk")
    check_eq(data, h.pread(8 * M, 0), "READ with DF matches a plain READ")

    # BLOCK_STATUS: whole range, then REQ_ONE.
    ext = extents(h, "base:allocation", 0, 16 * M)
    check_eq(sum(ln for ln, _ in ext), 16 * M, "BLOCK_STATUS covers the range")
    check(ext[0][1] == 0, "BLOCK_STATUS: written data at offset 0 is data, not zero")
    check(ext[-1][1] == nbd.STATE_HOLE | nbd.STATE_ZERO, "BLOCK_STATUS: never-written tail is a hole")
    calls = []

    def cb(meta, off, entries, err):
        calls.append((meta, off, list(entries)))
        return 0

    h.block_status(16 * M, 0, cb, nbd.CMD_FLAG_REQ_ONE)
    check_eq(len(calls), 1, "REQ_ONE: one chunk (one context)")
    check_eq(len(calls[0][2]), 2, "REQ_ONE: exactly one extent")
    check(0 < calls[0][2][0] <= 16 * M, "REQ_ONE extent length within the request")
    calls.clear()
    h.block_status(16 * M, 0, cb)
    check(len(calls[0][2]) > 2, "without REQ_ONE: several extents")
    calls.clear()
    h.block_status(100, size - 100, cb)
    check(calls and calls[0][2][0] <= 100, "BLOCK_STATUS at the end of the export stays within it")

    # A second connection with simple replies sees the same data.
    h2 = connect(uri, structured=False)
    check_eq(h2.pread(2 * M, 0), d1 + d2, "simple-reply READ on a second connection")
    h2.shutdown()

    # DISC (libnbd's shutdown sends NBD_CMD_DISC after flushing nothing).
    h.shutdown()
    log("ok: DISC")


main(run)
