"""Concurrent random I/O from several connections against a byte-exact model.

Connection i owns the 4 KiB stripes s with s % N == i, so every cluster is shared by all
connections (allocation, copy-on-write and zeroing races inside one cluster) while each byte has
one writer. Each connection keeps up to DEPTH requests in flight (never two on one stripe):
writes (some FUA), WRITE_ZEROES (NO_HOLE / FUA / FAST_ZERO), TRIM (content unknown until
rewritten), reads verified against the model at completion, flushes. At the end every stripe
is rewritten where unknown and read back, and the model is written out for qemu-img compare.

usage: stress.py URI MODEL_IN MODEL_OUT CONNECTIONS SECONDS SEED
"""
import os
import random
import threading
import time

import nbd
from nbdtest import check, connect, fail, log, main

STRIPE = 4096
DEPTH = 16


class Worker(threading.Thread):
    def __init__(self, uri, model, unknown, idx, n, secs, seed):
        super().__init__()
        self.h = connect(uri)
        self.model, self.unknown = model, unknown
        self.idx, self.n, self.secs = idx, n, secs
        self.rng = random.Random(seed * 1000 + idx)
        self.nstripes = len(model) // STRIPE
        self.mine = [s for s in range(idx, self.nstripes, n)]
        self.busy = set()
        self.errors = []
        self.counts = {}

    def done(self, what, stripe, check_fn=None):
        def cb(err):
            self.busy.discard(stripe)
            code = err.value if hasattr(err, "value") else err
            if code:
                if what == "fastzero" and code == 95:  # ENOTSUP: allowed, nothing changed
                    return 1
                self.errors.append(f"{what} on stripe {stripe} failed: errno {code}")
                return 1
            if check_fn:
                msg = check_fn()
                if msg:
                    self.errors.append(msg)
            return 1
        return cb

    def issue(self):
        rng = self.rng
        s = rng.choice(self.mine)
        if s in self.busy:
            return
        base = s * STRIPE
        a = rng.randrange(STRIPE)
        ln = rng.randint(1, STRIPE - a)
        off = base + a
        r = rng.random()
        self.busy.add(s)
        h = self.h
        if r < 0.45:
            data = os.urandom(ln)
            self.model[off:off + ln] = data
            self._clear_unknown(off, ln)
            flags = nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0
            h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off, completion=self.done("write", s), flags=flags)
            kind = "write"
        elif r < 0.60:
            flags = rng.choice([0, 0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FUA])
            self.model[off:off + ln] = bytes(ln)
            self._clear_unknown(off, ln)
            h.aio_zero(ln, off, completion=self.done("zero", s), flags=flags)
            kind = "zero"
        elif r < 0.65:
            # FAST_ZERO may fail with ENOTSUP (then nothing changed): content is either.
            self._mark_unknown(off, ln)
            h.aio_zero(ln, off, completion=self.done("fastzero", s), flags=nbd.CMD_FLAG_FAST_ZERO)
            kind = "fastzero"
        elif r < 0.70:
            self._mark_unknown(off, ln)
            h.aio_trim(ln, off, completion=self.done("trim", s))
            kind = "trim"
        elif r < 0.98:
            buf = nbd.Buffer(ln)
            want = bytes(self.model[off:off + ln])
            unk = [i - off for i in self._unknown_in(off, ln)]

            def verify(buf=buf, want=want, unk=unk, off=off, ln=ln):
                got = bytearray(buf.to_bytearray())
                for i in unk:
                    got[i] = want[i]
                if bytes(got) != want:
                    diff = next(i for i in range(ln) if got[i] != want[i])
                    return f"read [{off}, +{ln}) differs from the model at byte {off + diff}"
                return None
            h.aio_pread(buf, off, completion=self.done("read", s, verify))
            kind = "read"
        else:
            self.busy.discard(s)
            h.aio_flush()
            kind = "flush"
        self.counts[kind] = self.counts.get(kind, 0) + 1

    # unknown: a set of byte offsets whose content is unspecified (after TRIM / failed FAST_ZERO)
    def _mark_unknown(self, off, ln):
        self.unknown.update(range(off, off + ln))

    def _clear_unknown(self, off, ln):
        if self.unknown:
            self.unknown.difference_update(range(off, off + ln))

    def _unknown_in(self, off, ln):
        if not self.unknown:
            return []
        return [i for i in range(off, off + ln) if i in self.unknown]

    def run(self):
        try:
            end = time.monotonic() + self.secs
            h = self.h
            while time.monotonic() < end and not self.errors:
                while h.aio_in_flight() < DEPTH:
                    self.issue()
                h.poll(-1)
            while h.aio_in_flight() > 0:
                h.poll(-1)
            # Settle: rewrite unknown bytes, then verify all of this worker's stripes.
            for s in self.mine:
                base = s * STRIPE
                unk = self._unknown_in(base, STRIPE)
                if unk:
                    data = os.urandom(STRIPE)
                    self.model[base:base + STRIPE] = data
                    self._clear_unknown(base, STRIPE)
                    h.pwrite(data, base)
            h.flush()
            for first in range(0, len(self.mine), 64):
                group = self.mine[first:first + 64]
                lo, hi = group[0] * STRIPE, (group[-1] + 1) * STRIPE
                got = h.pread(hi - lo, lo)
                for s in group:
                    a = s * STRIPE - lo
                    if got[a:a + STRIPE] != self.model[s * STRIPE:(s + 1) * STRIPE]:
                        self.errors.append(f"final read of stripe {s} differs from the model")
                        break
            h.shutdown()
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"connection {self.idx}: {e}")


def run(argv):
    uri, model_in, model_out, n, secs, seed = argv[0], argv[1], argv[2], int(argv[3]), float(argv[4]), int(argv[5])
    model = bytearray(open(model_in, "rb").read())
    workers = []
    unknowns = [set() for _ in range(n)]
    workers = [Worker(uri, model, unknowns[i], i, n, secs, seed) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(secs + 120)
        if w.is_alive():
            fail(f"connection {w.idx} hung")
    total = {}
    for w in workers:
        for k, v in w.counts.items():
            total[k] = total.get(k, 0) + v
    log(f"requests: {total}")
    errors = [e for w in workers for e in w.errors]
    check(not errors, f"{n} connections x {secs:.0f} s of random I/O matched the model ({errors[:5]})")
    with open(model_out, "wb") as f:
        f.write(model)


main(run)
