"""Writers whose acknowledged and flushed data can be checked after the server stops or dies.

usage: crashwriter.py write URI STATE_DIR CONNS [SECONDS [EPOCH]]
       crashwriter.py verify URI STATE_DIR durable|acked

write: CONNS connections (one thread each, 16 WRITEs of 64 KiB in flight, a FLUSH after every
32 acknowledged) rewrite the 64 blocks of their own 4 MiB region with ever newer generations,
until the server goes away (or SECONDS pass). Never two writes to one block in flight. Each
block remembers the newest generation acknowledged, and the newest acknowledged before a FLUSH
that completed ("durable"). STATE_DIR/ready appears once every connection completed a FLUSH;
STATE_DIR/state.json is written when the writers end. Generations start at EPOCH << 32, so that
runs on one image (one EPOCH each, increasing) never mistake an older run's data for theirs.

verify: every 4 KiB sector of every block must hold a generation at least the durable one (after
kill -9) or the acknowledged one (after a clean shutdown) -- sectors of one block may come from
different generations newer than that (writes in flight are not atomic) -- and a block never
durably written may read as zeros.
"""
import json
import os
import random
import struct
import sys
import threading
import time

import nbd

BLOCK = 64 * 1024
SECTOR = 4096
BLOCKS = 64
DEPTH = 16
FLUSH_EVERY = 32


def sector_bytes(block_id, s, gen):
    fill = (gen * 7 + (gen >> 32) * 31 + s * 13 + block_id) & 0xFF
    return struct.pack(">IIQ", block_id, s, gen) + bytes([fill]) * (SECTOR - 16)


def block_bytes(block_id, gen):
    return b"".join(sector_bytes(block_id, s, gen) for s in range(BLOCK // SECTOR))


class Writer(threading.Thread):
    def __init__(self, uri, conn, deadline, ready, epoch):
        super().__init__(daemon=True)
        self.uri, self.conn, self.deadline, self.ready = uri, conn, deadline, ready
        self.gen = [epoch << 32] * BLOCKS
        self.acked = [0] * BLOCKS
        self.durable = [0] * BLOCKS
        self.writes = self.flushes = 0
        self.end = ""

    def run(self):
        try:
            self.loop()
        except nbd.Error as e:
            self.end = f"connection ended: {e.string}"
        if not self.end:
            self.end = "time is up"

    def loop(self):
        h = nbd.NBD()
        h.connect_uri(self.uri)
        rng = random.Random(self.conn)
        writes = {}  # cookie -> (block, gen)
        flush = None  # (cookie, snapshot of acked)
        since_flush = 0
        while time.monotonic() < self.deadline:
            busy = {b for b, _ in writes.values()}
            while len(writes) < DEPTH:
                b = rng.choice([x for x in range(BLOCKS) if x not in busy])
                busy.add(b)
                self.gen[b] += 1
                bid = self.conn * BLOCKS + b
                buf = nbd.Buffer.from_bytearray(bytearray(block_bytes(bid, self.gen[b])))
                writes[h.aio_pwrite(buf, bid * BLOCK)] = (b, self.gen[b])
            if flush is None and since_flush >= FLUSH_EVERY:
                flush = (h.aio_flush(), list(self.acked))
                since_flush = 0
            h.poll(-1)
            for cookie in [c for c in writes if h.aio_command_completed(c)]:
                b, g = writes.pop(cookie)
                self.acked[b] = g
                self.writes += 1
                since_flush += 1
            if flush is not None and h.aio_command_completed(flush[0]):
                self.durable = flush[1]
                self.flushes += 1
                flush = None
                self.ready.set()
        h.shutdown()


def write(uri, state_dir, conns, seconds, epoch):
    deadline = time.monotonic() + seconds
    writers = [Writer(uri, c, deadline, threading.Event(), epoch) for c in range(conns)]
    for w in writers:
        w.start()
    announced = False
    while any(w.is_alive() for w in writers):
        if not announced and all(w.ready.is_set() for w in writers):
            open(os.path.join(state_dir, "ready"), "w").close()
            announced = True
        time.sleep(0.02)
    state = [{"durable": w.durable, "acked": w.acked} for w in writers]
    with open(os.path.join(state_dir, "state.json.tmp"), "w") as f:
        json.dump(state, f)
    os.rename(os.path.join(state_dir, "state.json.tmp"), os.path.join(state_dir, "state.json"))
    total = sum(w.writes for w in writers)
    print(f"  [crashwriter] {conns} connections: {total} writes and "
          f"{sum(w.flushes for w in writers)} flushes acknowledged; {writers[0].end}", flush=True)
    if total == 0:
        sys.exit("no write was acknowledged")


def verify(uri, state_dir, which):
    with open(os.path.join(state_dir, "state.json")) as f:
        state = json.load(f)
    h = nbd.NBD()
    h.connect_uri(uri)
    bad, newer, zero_ok = [], 0, 0
    for conn, st in enumerate(state):
        for b in range(BLOCKS):
            want = st[which][b]
            bid = conn * BLOCKS + b
            data = h.pread(BLOCK, bid * BLOCK)
            for s in range(BLOCK // SECTOR):
                sec = data[s * SECTOR:(s + 1) * SECTOR]
                if sec == bytes(SECTOR):
                    if want:
                        bad.append(f"block {bid} sector {s}: zeros, generation {want} was {which}")
                    zero_ok += 1
                    continue
                got_id, got_s, gen = struct.unpack(">IIQ", sec[:16])
                if (got_id, got_s) != (bid, s) or sec != sector_bytes(bid, s, gen):
                    bad.append(f"block {bid} sector {s}: not a sector this writer wrote")
                elif gen < want:
                    bad.append(f"block {bid} sector {s}: generation {gen}, but {want} was {which}")
                elif gen > want:
                    newer += 1
    h.shutdown()
    n = len(state) * BLOCKS * (BLOCK // SECTOR)
    print(f"  [crashwriter] verify ({which}): {n} sectors, {newer} newer than {which}, "
          f"{zero_ok} never written, {len(bad)} bad", flush=True)
    if bad:
        sys.exit("FAIL [crashwriter]: " + "; ".join(bad[:5]))


def main():
    mode, uri, state_dir = sys.argv[1:4]
    if mode == "write":
        seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 3600
        write(uri, state_dir, int(sys.argv[4]), seconds, int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    else:
        verify(uri, state_dir, sys.argv[4])


main()
