"""A client sends 10,000 requests the server refuses (READs past the end), each answered with
NBD_EINVAL on a connection that stays usable; the shell then counts what reached the log.

usage: logflood.py URI COUNT
"""
import struct

from nbdtest import CMD_READ, REQUEST_MAGIC, Raw, check, log, main


def run(argv):
    uri, count = argv[0], int(argv[1])
    r = Raw(uri, timeout=60)
    size, _, _ = r.handshake(structured=False)
    sent = 0
    while sent < count:
        n = min(1000, count - sent)
        r.send(b"".join(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, sent + i, size, 4096)
                        for i in range(n)))
        for i in range(n):
            err, cookie = r.simple_reply()
            if err != 22 or cookie != sent + i:
                check(False, f"request {sent + i}: error {err} cookie {cookie}, expected EINVAL")
        sent += n
    log(f"{count} refused requests, each answered with NBD_EINVAL")
    r.request(CMD_READ, 0, 4096, cookie=count)
    err, cookie = r.simple_reply()
    check(err == 0 and cookie == count and len(r.recv_exact(4096)) == 4096,
          "the connection still serves a valid READ")
    r.close()


main(run)
