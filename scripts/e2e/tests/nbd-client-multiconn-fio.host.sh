#!/bin/bash
# nbd-client -C 4 in the guest against qnbd -e 8 on the host: four TCP connections at once
# (each guest connection is its own host connection through guestfwd), fio randwrite with
# crc32c verification on /dev/nbd0 passes with reads and writes on more than one connection,
# qnbd exits with 0 once all four have left, and the image is clean.
source "$(dirname "$0")/../lib.bash"
e2e_need qemu-img

mkimg "$T/disk.qcow2" 128M
# -v: every request is logged with its connection's peer address, to see which carry I/O.
start_server srv -v -x disk -e 8 "$T/disk.qcow2"
# The guest has 2 CPUs, so 2 of the 4 connections carry I/O (the kernel sends a CPU's requests
# on one connection). 4 vCPUs are not used: under TCG a connection then stalls now and then
# (about 1 run in 4 with qnbd -v, with multi- and single-threaded TCG alike): socat hands all of
# qnbd's replies to QEMU's user-mode network, but nothing more comes from the guest on that
# connection until the kernel times the requests out after 30 s and resends them on another.
# Never seen with 2 vCPUs.
e2e_boot_vm --fwd "${SRV_PORT[srv]}" multiconn nbd-client-multiconn-fio.guest.sh
e2e_wait_result multiconn
wait_server_exit srv 20 0
log=${SRV_LOG[srv]}
grep -q "connected (4 clients)" "$log" || fail "qnbd never had 4 clients at once"
(( $(grep -c ": disconnected" "$log") == 4 )) || fail "not 4 disconnections"
for cmd in READ WRITE; do
    grep -E ": $cmd offset=" "$log" | awk '{print $5}' | sort | uniq -c >"$T/$cmd.per-conn"
    say "$cmd requests per connection: $(tr -s ' \n' ' ' <"$T/$cmd.per-conn")"
    (( $(wc -l <"$T/$cmd.per-conn") >= 2 )) || fail "$cmd requests were all on one connection"
done
img_check "$T/disk.qcow2"
finish
