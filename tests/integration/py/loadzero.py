"""Zeroes, trims, writes, reads and flushes against a byte model, 32 in flight per connection,
each connection on its own region (fio covers the rest of the export but cannot send zeroes).

usage: loadzero.py URI OFFSET CONNS REGION SECONDS   (server with --discard=unmap)
"""
import random
import sys
import threading
import time

import nbd

BLOCK = 64 * 1024
DEPTH = 32


def data(b, g):
    return (bytes([g & 0xFF, b & 0xFF]) * (BLOCK // 2))


class Conn(threading.Thread):
    def __init__(self, uri, base, nblocks, seed, deadline):
        super().__init__(daemon=True)
        self.uri, self.base, self.n, self.seed, self.deadline = uri, base, nblocks, seed, deadline
        self.counts = {"write": 0, "zero": 0, "trim": 0, "read": 0, "flush": 0}
        self.errors = []

    def run(self):
        try:
            self.loop()
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"{type(e).__name__}: {e}")

    def loop(self):
        h = nbd.NBD()
        h.connect_uri(self.uri)
        rng = random.Random(self.seed)
        model = [bytes(BLOCK)] * self.n  # expected content; None: trimmed (zeros or old data)
        old = [bytes(BLOCK)] * self.n
        ops, gen = {}, 0  # cookie -> (kind, block, buffer)
        while time.monotonic() < self.deadline or ops:
            busy = {b for _, b, _ in ops.values()}
            while len(ops) < DEPTH and time.monotonic() < self.deadline:
                b = rng.randrange(self.n)
                if b in busy:
                    continue
                busy.add(b)
                off = self.base + b * BLOCK
                kind = rng.choice(("write", "write", "zero", "trim", "read", "read", "flush"))
                buf = None
                if kind == "write":
                    gen += 1
                    d = data(b, gen)
                    c = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(d)), off)
                    old[b], model[b] = d, d
                elif kind == "zero":
                    flags = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0
                    c = h.aio_zero(BLOCK, off, flags=flags)
                    old[b], model[b] = bytes(BLOCK), bytes(BLOCK)
                elif kind == "trim":
                    c = h.aio_trim(BLOCK, off)
                    model[b] = None
                elif kind == "read":
                    buf = nbd.Buffer(BLOCK)
                    c = h.aio_pread(buf, off)
                else:
                    c = h.aio_flush()
                ops[c] = (kind, b, buf)
            h.poll(-1)
            for c in [c for c in ops if h.aio_command_completed(c)]:
                kind, b, buf = ops.pop(c)
                self.counts[kind] += 1
                if kind == "read":
                    got = buf.to_bytearray()
                    ok = got == model[b] if model[b] is not None else got in (bytes(BLOCK), old[b])
                    if not ok:
                        raise AssertionError(f"block {b} at {self.base + b * BLOCK}: wrong data")
        h.shutdown()


def main():
    uri, offset, conns, region, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    deadline = time.monotonic() + seconds
    ts = [Conn(uri, offset + i * region, region // BLOCK, i, deadline) for i in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 120)
    total = {k: sum(t.counts[k] for t in ts) for k in ts[0].counts}
    print(f"  [loadzero] {conns} connections: {total}", flush=True)
    errors = [e for t in ts for e in t.errors]
    if errors or any(t.is_alive() for t in ts):
        sys.exit(f"FAIL [loadzero]: {errors[:3] or 'a connection hung'}")


main()
