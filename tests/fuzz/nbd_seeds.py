#!/usr/bin/env python3
"""Writes seed inputs for fuzz_connection and fuzz_protocol.

Usage: nbd_seeds.py OUT_DIR   (creates OUT_DIR/connection and OUT_DIR/protocol)

A connection seed is one configuration byte (see fuzz_connection.cpp) followed by what a client
sends: client flags, options, then transmission requests with their WRITE payloads. A protocol
seed is the selector byte of a fuzz_protocol target followed by that target's input.
"""
import os
import struct
import sys

IHAVEOPT = b"IHAVEOPT"
REQUEST_MAGIC = 0x25609513
OPT = dict(EXPORT_NAME=1, ABORT=2, LIST=3, STARTTLS=5, INFO=6, GO=7, STRUCTURED_REPLY=8,
           LIST_META=9, SET_META=10, EXTENDED_HEADERS=11)
CMD = dict(READ=0, WRITE=1, DISC=2, FLUSH=3, TRIM=4, CACHE=5, WRITE_ZEROES=6, BLOCK_STATUS=7,
           RESIZE=8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3


def flags(fixed=True, no_zeroes=True):
    return struct.pack(">I", (1 if fixed else 0) | (2 if no_zeroes else 0))


def opt(option, payload=b""):
    return IHAVEOPT + struct.pack(">II", option, len(payload)) + payload


def info(name, infos=()):
    return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) +
            b"".join(struct.pack(">H", i) for i in infos))


def meta(name, queries):
    out = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    return out + b"".join(struct.pack(">I", len(q)) + q for q in queries)


class Requests:
    """Transmission requests with distinct cookies."""

    def __init__(self):
        self.cookie = 0x100
        self.out = b""

    def add(self, cmd, offset=0, length=0, fl=0, data=b"", cookie=None):
        if cookie is None:
            self.cookie += 1
            cookie = self.cookie
        self.out += struct.pack(">IHHQQI", REQUEST_MAGIC, fl, CMD[cmd], cookie, offset, length)
        self.out += data
        return self


def go(name=b"", structured=True, contexts=(b"base:allocation",)):
    out = flags()
    if structured:
        out += opt(OPT["STRUCTURED_REPLY"])
        if contexts:
            out += opt(OPT["SET_META"], meta(name, list(contexts)))
    return out + opt(OPT["GO"], info(name, [INFO_BLOCK_SIZE]))


def mixed(r, size, writable=True):
    r.add("READ", 0, 4096).add("READ", size - 512, 512).add("READ", 4096 + 7, 1000)
    if writable:
        r.add("WRITE", 8192, 4096, data=b"\xab" * 4096)
        r.add("WRITE", 16384, 512, FUA, data=b"\x00" * 512)
        r.add("WRITE_ZEROES", 20480, 8192).add("WRITE_ZEROES", 40960, 4096, NO_HOLE)
        r.add("WRITE_ZEROES", 65536, 4096, FAST_ZERO).add("TRIM", 0, 8192)
        r.add("READ", 8192, 8192)
    r.add("FLUSH").add("CACHE", 0, 65536)
    return r


def connection_seeds():
    seeds = {}
    qcow, raw = 1 << 20, (256 << 10) - 4096
    r = mixed(Requests(), qcow)
    r.add("BLOCK_STATUS", 0, qcow).add("BLOCK_STATUS", 4096, 65536, REQ_ONE)
    r.add("READ", 0, 65536, DF).add("DISC")
    seeds["go-structured"] = go(contexts=(b"base:allocation", b"qemu:allocation-depth")) + r.out
    r = mixed(Requests(), qcow)
    seeds["export-name"] = flags(no_zeroes=False) + opt(OPT["EXPORT_NAME"]) + r.add("DISC").out
    r = mixed(Requests(), raw).add("BLOCK_STATUS", 0, raw)
    seeds["raw"] = go(b"raw") + r.out
    r = mixed(Requests(), qcow, writable=False).add("WRITE", 0, 512, data=b"x" * 512)
    seeds["read-only"] = go(b"ro", structured=False) + r.add("TRIM", 0, 512).out
    seeds["options"] = (
        flags() + opt(OPT["LIST"]) + opt(OPT["INFO"], info(b"", [0, 1, 2, 3, 99])) +
        opt(OPT["INFO"], info(b"nope")) + opt(OPT["STARTTLS"]) + opt(OPT["EXTENDED_HEADERS"]) +
        opt(77, b"junk") + opt(OPT["LIST_META"], meta(b"", [])) + opt(OPT["STRUCTURED_REPLY"]) +
        opt(OPT["LIST_META"], meta(b"", [b"base:", b"qemu:", b"x:y"])) +
        opt(OPT["SET_META"], meta(b"ro", [b"base:allocation"])) +
        opt(OPT["LIST"], b"x") + opt(OPT["INFO"], b"\x00\x00") + opt(OPT["ABORT"]))
    r = Requests()
    r.add("READ", 1 << 20, 512).add("READ", 511, 1).add("WRITE", (1 << 20) - 100, 200, data=b"z" * 200)
    r.add("FLUSH", 4, 0).add("RESIZE", 0, 0).add("READ", 0, 512, 0x40).add("TRIM", 0, 512, DF)
    r.add("BLOCK_STATUS", 0, 0).add("READ", 0, 33 << 20, DF).add("WRITE_ZEROES", 0, 512, FAST_ZERO)
    seeds["bad-requests"] = go(contexts=()) + r.out
    r = Requests()
    for i in range(40):
        r.add("READ", (i * 4096) % raw, 4096, cookie=7)
    seeds["concurrent-same-cookie"] = go(b"raw", structured=False) + r.out
    r = Requests().add("WRITE", 0, 4096, data=b"\x01" * 100)
    seeds["truncated"] = go() + r.out
    # A WRITE over 32 MiB behind READs in flight: NBD_EINVAL for it, payload unread, then close.
    r = mixed(Requests(), qcow, writable=False).add("WRITE", 0, (64 << 20) + 1, data=b"\xab" * 512)
    seeds["oversized-write"] = flags(no_zeroes=False) + opt(OPT["EXPORT_NAME"]) + r.out
    seeds["bad-flags"] = struct.pack(">I", 0xff) + opt(OPT["GO"], info(b""))
    seeds["export-name-unknown"] = flags() + opt(OPT["EXPORT_NAME"], b"missing")
    out = {}
    for name, stream in seeds.items():
        for config in (0x00, 0x05, 0x1e, 0xff):
            out[f"{name}-{config:02x}"] = bytes([config]) + stream
    return out


def protocol_seeds():
    # Selector bytes: the order of kTargets in fuzz_protocol.cpp.
    s = {}
    s["client-flags"] = b"\x00" + struct.pack(">HI", 3, 3)
    s["option-header"] = b"\x01" + opt(OPT["GO"], b"")[:16]
    s["export-name"] = b"\x02" + b"disk0"
    s["empty"] = b"\x03"
    s["info"] = b"\x04" + info(b"name", [0, 3])
    s["meta"] = b"\x05\xff" + meta(b"", [b"base:allocation", b"qemu:", b"qemu:allocation-depth"])
    s["option"] = b"\x06" + struct.pack(">I", OPT["SET_META"]) + meta(b"x", [b"base:"])
    s["request"] = b"\x07" + struct.pack(">IHHQQI", REQUEST_MAGIC, 1, 1, 9, 4096, 512)
    s["check-request"] = b"\x08" + bytes(range(40))
    s["errno"] = b"\x09" + bytes(range(3, 30))
    s["option-reply"] = b"\x0a" + struct.pack(">QIII", 0x0003e889045565a9, 7, 1, 0)
    s["chunk-header"] = b"\x0b" + struct.pack(">IHHQI", 0x668e33ef, 1, 5, 3, 12)
    s["simple-reply"] = b"\x0c" + struct.pack(">IIQ", 0x67446698, 22, 5)
    s["wire-string"] = b"\x0d" + "é".encode() * 2050
    s["meta-query"] = b"\x0e" + b"qemu:dirty-bitmap:a"
    s["names"] = b"\x0f" + bytes(range(20))
    s["encoders"] = b"\x10" + bytes(range(0, 250, 3))
    s["reader"] = b"\x11" + bytes(range(64))
    return s


def main():
    out = sys.argv[1]
    for kind, seeds in (("connection", connection_seeds()), ("protocol", protocol_seeds())):
        os.makedirs(os.path.join(out, kind), exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(out, kind, "gen-" + name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
