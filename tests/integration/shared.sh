#!/bin/bash
# -e/--shared limits: with -e 1 (the default) and -e 2 a further client waits until one leaves,
# then is served; -e 0 serves 24 clients at once. CAN_MULTI_CONN iff the limit is not 1.
source "$(dirname "$0")/lib/common.bash"
need qemu-img
need_python_nbd

for n in 1 2 0; do
    mkimg "$T/s$n.qcow2" 64M
    start_server s$n -t -e $n "$T/s$n.qcow2"
    py shared.py "$(uri s$n)" $n
    check_alive s$n
    stop_server s$n
    img_check "$T/s$n.qcow2"
done
# Without -e the limit is 1.
mkimg "$T/d.qcow2" 64M
start_server d -t "$T/d.qcow2"
py shared.py "$(uri d)" 1
finish
