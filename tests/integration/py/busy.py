"""Keeps writing (many requests in flight) until killed; creates READY_FILE once data is durable.

usage: busy.py URI READY_FILE
"""
import sys

import nbd

uri, ready = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
M = 1 << 20
h.pwrite(b"\x77" * (4 * M), 0)
h.flush()
open(ready, "w").close()
i = 0
while True:
    cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([i % 251]) * 65536), 8 * M + (j * 65536) % (32 * M))
               for j in range(i * 32, i * 32 + 32)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    i += 1
