#!/bin/bash
# Pipelining and multi-conn: 160 writes then 160 reads in flight on one connection (structured
# and simple replies) with every byte verified, a mixed pipeline of reads/writes/zeroes/cache/
# flush, 10 x 32 MiB reads in flight (more than the server buffers at once); with -e 4, a write on
# connection A, a flush on B, then a read on C sees the data (CAN_MULTI_CONN).
source "$(dirname "$0")/lib/common.bash"
need qemu-img
need_python_nbd

mkimg "$T/a.qcow2" 64M
start_server a -t -e 0 "$T/a.qcow2"
py pipeline.py pipeline "$(uri a)"
stop_server a
img_check "$T/a.qcow2"

mkimg "$T/b.qcow2" 64M
start_server b -t -e 4 "$T/b.qcow2"
py pipeline.py multiconn "$(uri b)" 4
stop_server b
img_check "$T/b.qcow2"
finish
