#!/usr/bin/env python3
"""Writes fuzz_qcow2 seeds cut out of the fuzz_image seeds (real qemu-img images).

Usage: qcow2_seeds.py IMAGE_SEED_DIR OUT_DIR

A fuzz_qcow2 input is a selector byte (the order of kTargets in fuzz_qcow2.cpp) followed by
that decoder's input; see the comment of each decoder there for its layout (cluster sizes are
given as cluster_bits - 9).
"""
import os
import struct
import sys
import zlib

SEPARATOR = b"\nQNBD-FUZZ-NEXT-FILE\n"
HEADER, SNAPSHOTS, L2, REFCOUNTS, COMPRESSED, TABLES = range(6)


def be64(b, off):
    return struct.unpack_from(">Q", b, off)[0] if off + 8 <= len(b) else 0


def cut(image):
    """The seeds of one image (the first file of an image seed)."""
    if len(image) < 104 or image[:4] != b"QFI\xfb":
        return {}
    (version, _, _, cluster_bits, _, _, l1_size, l1_off, rt_off, rt_clusters, nb_snap,
     snap_off) = struct.unpack_from(">IQIIQIIQQIIQ", image, 4)
    cs = 1 << cluster_bits
    incompat = be64(image, 72) if version >= 3 else 0
    extended = bool(incompat & 16)
    ctype = image[104] if version >= 3 and struct.unpack_from(">I", image, 100)[0] > 104 else 0
    out = {"header": bytes([HEADER]) + struct.pack(">I", len(image) - cs) + image[:cs]}
    geo = bytes([cluster_bits - 9, len(image) >> 16 & 0xff])
    out["l1"] = bytes([TABLES, 0]) + geo + image[l1_off:l1_off + 8 * l1_size]
    out["reftable"] = bytes([TABLES, 1]) + geo + image[rt_off:rt_off + cs * rt_clusters][:4096]
    block = be64(image, rt_off) & ~0x1ff
    order = struct.unpack_from(">I", image, 96)[0] if version >= 3 else 4
    if block:
        out["refblock"] = bytes([REFCOUNTS, order]) + image[block:block + min(cs, 4096)]
    if nb_snap:
        out["snapshots"] = (bytes([SNAPSHOTS, cluster_bits - 9]) + struct.pack(">IQ", nb_snap, len(image))
                            + image[snap_off:snap_off + 4096])
    fmt = cluster_bits - 9 | (0x20 if extended else 0) | (0x40 if version >= 3 else 0)
    l2 = be64(image, l1_off) & 0x00fffffffffffe00
    if l2:
        out["l2"] = bytes([L2, fmt]) + image[l2:l2 + min(cs, 2048)]
        step = 16 if extended else 8
        for j in range(0, cs, step):
            e = be64(image, l2 + j)
            if not e & (1 << 62):
                continue
            x = 62 - (cluster_bits - 8)
            host = e & ((1 << x) - 1)
            length = (((e & ~(3 << 62)) >> x) + 1) * 512 - (host & 511)
            out["compressed-%d" % j] = (bytes([COMPRESSED, ctype, cluster_bits - 9])
                                        + image[host:host + length])
    return out


def regressions(image):
    """Images of bugs the fuzz targets found, patched into a 512-byte-cluster qemu-img image
    (v3, 16-bit refcounts), as in the regression tests of tests/unit/damage_alloc_test.cpp."""
    l1, rt = be64(image, 40), be64(image, 48)
    block, l2 = be64(image, rt), be64(image, l1) & 0x00fffffffffffe00

    def patched(off, fmt, value):
        out = bytearray(image)
        struct.pack_into(fmt, out, off, value)
        return bytes(out)

    return {
        "l2-table-on-refcount-table": patched(l1, ">Q", rt | 1 << 63),
        "refcount-table-entry0-zero-hang": patched(rt, ">Q", 0),
        "metadata-refcount-zero-overwrite": patched(block + 2 * (l2 // 512), ">H", 0),
        "refcount-table-offset-wraps": patched(rt + 8, ">Q", (1 << 64) - 512),
        "dirty-rebuild-entry-past-eof-oom": patched(72, ">Q", 1)[:l2 + 8] + struct.pack(
            ">Q", 1 << 46 | 1 << 63) + image[l2 + 16:],
    }


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as f:
            image = f.read().split(SEPARATOR)[0]
        for kind, data in cut(image).items():
            with open(os.path.join(dst, "%s-%s" % (name, kind)), "wb") as f:
                f.write(data)
    with open(os.path.join(src, "gen-v3-512"), "rb") as f:
        base = f.read()
    for name, data in regressions(base).items():
        with open(os.path.join(src, "regress-" + name), "wb") as f:
            f.write(data)
    raw = zlib.compressobj(9, zlib.DEFLATED, -12)
    data = raw.compress(b"qnbd" * 128) + raw.flush()
    with open(os.path.join(dst, "gen-deflate-512"), "wb") as f:
        f.write(bytes([COMPRESSED, 0, 0]) + data)
    with open(os.path.join(dst, "gen-refcount-orders"), "wb") as f:
        f.write(bytes([REFCOUNTS, 2]) + bytes(range(256)) * 2)


if __name__ == "__main__":
    main()
