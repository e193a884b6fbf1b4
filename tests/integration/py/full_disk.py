"""Writes until the filesystem under the image is full: the client gets NBD_ENOSPC (not EIO, no
disconnect), everything written before reads back, reads go on; once FILLER is deleted the
failed write and more succeed, and a flush covers them.

usage: full_disk.py URI FILLER
"""
import os

import nbd
from nbdtest import check, check_eq, connect, fail, log, main, pattern

M = 1 << 20


def run(argv):
    uri, filler = argv
    h = connect(uri)
    size = h.get_size()
    written = 0
    err = None
    while written < size:
        try:
            h.pwrite(pattern(M, written // M), written)
        except nbd.Error as e:
            err = e
            break
        written += M
    check(err is not None, f"the filesystem filled up ({written >> 20} MiB written)")
    check(err.errno == "ENOSPC", f"the failing WRITE got ENOSPC ({err.errno}: {err.string})")
    check(written >= 4 * M, f"{written >> 20} MiB went in before the filesystem was full")
    for i in range(3):
        try:
            h.pwrite(pattern(M, 999), written)
            fail("a WRITE succeeded with the filesystem still full")
        except nbd.Error as e:
            check(e.errno == "ENOSPC", f"WRITE {i + 1} while full: ENOSPC again ({e.errno})")
    for off in range(0, written, M):
        if h.pread(M, off) != pattern(M, off // M):
            fail(f"data at {off >> 20} MiB wrong while the filesystem is full")
    log(f"ok: all {written >> 20} MiB read back while the filesystem is full")
    check(not h.aio_is_dead(), "the connection is still up")

    os.remove(filler)
    log("filler deleted")
    more = written + 8 * M
    for off in range(written, more, M):
        h.pwrite(pattern(M, off // M), off)
    h.flush()
    log(f"ok: 8 MiB more written and flushed after space was freed")
    for off in range(0, more, M):
        if h.pread(M, off) != pattern(M, off // M):
            fail(f"data at {off >> 20} MiB wrong after space was freed")
    log(f"ok: all {more >> 20} MiB read back")
    h.shutdown()
    with open(os.environ["WRITTEN_FILE"], "w") as f:
        f.write(str(more))


main(run)
