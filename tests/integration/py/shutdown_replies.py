"""SIGTERM while 8 READs of 32 MiB are being answered: every reply arrives whole, then the server
closes (the stream ends between messages, nothing is cut). Then a client that never reads its
replies: the server still exits, kShutdownGrace (5 s) after the signal.

usage: shutdown_replies.py URI SERVER_PID whole|stuck
"""
import os
import signal
import socket
import time

from nbdtest import CMD_READ, Raw, check, connect, fail, log, main, pattern

M = 1 << 20


def run(argv):
    uri, pid, mode = argv[0], int(argv[1]), argv[2]
    h = connect(uri)
    h.pwrite(pattern(32 * M, 1), 0)
    h.shutdown()
    r = Raw(uri, timeout=30)
    r.handshake(structured=False)
    r.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    for c in range(8):
        r.request(CMD_READ, 0, 32 * M, cookie=c)
    first = r.recv_exact(16)
    if mode == "stuck":
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)
        log("SIGTERM sent; this client reads nothing more")
        time.sleep(30)  # the shell checks that the server exits meanwhile
        return
    os.kill(pid, signal.SIGTERM)
    log("SIGTERM sent with 8 READ replies of 32 MiB under way")
    data = r.recv_exact(32 * M)
    check(first[:4] == b"\x67\x44\x66\x98" and data == pattern(32 * M, 1), "first reply whole and correct")
    got = 1
    try:
        while True:
            err, cookie = r.simple_reply()
            if err:
                fail(f"reply {cookie}: error {err}")
            if r.recv_exact(32 * M) != pattern(32 * M, 1):
                fail(f"reply {cookie}: wrong data")
            got += 1
    except EOFError as e:
        if "after 0 of" not in str(e):
            fail(f"the stream was cut inside a reply after {got} whole replies: {e}")
    except ConnectionResetError as e:
        fail(f"connection reset after {got} whole replies: {e}")
    check(got == 8, f"all 8 READs in flight at the SIGTERM answered in full ({got}), then a clean close")


main(run)
