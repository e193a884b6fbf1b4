#!/usr/bin/env python3
"""Prints qemu-io commands that fill an image with 64 KiB writes in one of four orders:
seq, reverse, rand (all clusters shuffled) or part-rand (shuffled within each 1 MiB)."""
import random
import sys

order, size = sys.argv[1], int(sys.argv[2])
block, block2 = 64 * 1024, 1024 * 1024
random.seed(12345)
if order in ("seq", "reverse", "rand"):
    writes = list(range(0, size, block))
    if order == "rand":
        random.shuffle(writes)
    elif order == "reverse":
        writes.reverse()
elif order == "part-rand":
    writes = []
    for off in range(0, size, block2):
        group = list(range(off, off + block2, block))
        random.shuffle(group)
        writes.extend(group)
else:
    sys.exit("order must be seq, reverse, rand or part-rand")
for w in writes:
    print(f"write -P 0xff {w} {block}")
print("q")
