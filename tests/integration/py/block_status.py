"""BLOCK_STATUS compared with qemu-img map of the same image (backing chain included):
base:allocation through libnbd, nbdinfo --map and qemu-img map over NBD; qemu:allocation-depth
through libnbd and nbdinfo --map=qemu:allocation-depth; REQ_ONE.

usage: block_status.py URI IMAGE DEPTH(0|1) [FORMAT]   (the server exports IMAGE read-only;
       -A iff DEPTH; FORMAT qcow2 (default) or raw)
"""
import json
import subprocess

import nbd
from nbdtest import check, check_eq, connect, extents, fail, log, main

BASE = "base:allocation"
DEPTH = "qemu:allocation-depth"


def merge(runs):
    out = []
    for ln, st in runs:
        if ln == 0:
            continue
        if out and out[-1][1] == st:
            out[-1] = (out[-1][0] + ln, st)
        else:
            out.append((ln, st))
    return out


def qemu_map(target, fmt):
    out = subprocess.run(["qemu-img", "map", "--output=json", "-f", fmt, target], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def expected_base(entries):
    return merge([(e["length"], (0 if e["data"] else nbd.STATE_HOLE) | (nbd.STATE_ZERO if e["zero"] else 0))
                  for e in entries])


def expected_depth(entries):
    return merge([(e["length"], e["depth"] + 1 if e.get("present", e["data"]) else 0) for e in entries])


def nbdinfo_map(uri, context):
    args = ["nbdinfo", "--json", "--map" if context == BASE else f"--map={context}", uri]
    out = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    pos = 0
    runs = []
    for e in out:
        if e["offset"] != pos:
            fail(f"nbdinfo --map not contiguous at {pos}: {e}")
        runs.append((e["length"], e["type"]))
        pos += e["length"]
    return merge(runs)


def show(runs):
    pos = 0
    lines = []
    for ln, st in runs:
        lines.append(f"{pos:>10} {ln:>10} {st}")
        pos += ln
    return "\n".join(lines)


def compare(got, want, what):
    if got != want:
        fail(f"{what} differs from qemu-img map\n--- got (offset length status):\n{show(got)}\n"
             f"--- expected:\n{show(want)}")
    log(f"ok: {what} matches qemu-img map ({len(got)} runs)")


def run(argv):
    uri, image, depth = argv[0], argv[1], argv[2] == "1"
    fmt = argv[3] if len(argv) > 3 else "qcow2"
    entries = qemu_map(image, fmt)
    h = connect(uri, contexts=[BASE, DEPTH])
    size = h.get_size()
    check_eq(h.can_meta_context(DEPTH), depth, "qemu:allocation-depth negotiated iff -A")

    want = expected_base(entries)
    compare(extents(h, BASE, 0, size), want, "libnbd base:allocation")
    compare(nbdinfo_map(uri, BASE), want, "nbdinfo --map")
    compare(expected_base(qemu_map(uri, "raw")), want, "qemu-img map over nbd://")
    if depth:
        want_d = expected_depth(entries)
        compare(extents(h, DEPTH, 0, size), want_d, "libnbd qemu:allocation-depth")
        compare(nbdinfo_map(uri, DEPTH), want_d, "nbdinfo --map=qemu:allocation-depth")
        if any(e["depth"] > 0 for e in entries):
            check(any(st >= 2 for _, st in want_d), "the chain really has data below the top layer")
    else:
        r = subprocess.run(["nbdinfo", "--map=qemu:allocation-depth", uri], capture_output=True, text=True)
        check(r.returncode != 0 or not r.stdout.strip(), "nbdinfo --map=qemu:allocation-depth without -A gives nothing")

    # Piecewise queries at odd offsets agree with the whole-range answer.
    for off, ln in ((4096, 3 << 20), ((1 << 20) + 12345, 7 << 20), (size - 70000, 70000), (size - 1, 1)):
        ln = min(ln, size - off)
        part = extents(h, BASE, off, ln)
        whole = []
        pos = 0
        for l, st in want:
            a, b = max(pos, off), min(pos + l, off + ln)
            if a < b:
                whole.append((b - a, st))
            pos += l
        check_eq(part, merge(whole), f"base:allocation of [{off}, +{ln})")

    # REQ_ONE: exactly one extent per context, agreeing with the first run.
    for off in sorted({o for o in (0, 5 << 20, (10 << 20) + 4096, size - 65536) if o < size}):
        got = {}

        def cb(meta, o, ents, err):
            got[meta] = list(ents)
            return 0

        h.block_status(size - off, off, cb, nbd.CMD_FLAG_REQ_ONE)
        check_eq(sorted(got), sorted([BASE, DEPTH] if depth else [BASE]), f"REQ_ONE at {off}: one chunk per context")
        for meta, ents in got.items():
            check_eq(len(ents), 2, f"REQ_ONE at {off}, {meta}: one extent")
            ref = extents(h, meta, off, size - off)[0]
            check(ents[1] == ref[1] and 0 < ents[0] <= ref[0],
                  f"REQ_ONE at {off}, {meta}: extent {ents} agrees with first run {ref}")
    h.shutdown()


main(run)
