#!/bin/bash
# A real full filesystem: the image lives on a 48 MiB tmpfs (mounted directly as root, else in a
# user and mount namespace), and a client writes until it is full. The client gets NBD_ENOSPC,
# not EIO and no disconnect; what was written reads back while the filesystem is full; after a
# filler file is deleted the failed write and more succeed and flush; the server exits 0, the
# image is qemu-img check clean (no leaks) and qemu-io reads every byte the client wrote.
if [[ $(id -u) != 0 && -z ${QNBD_IN_USERNS:-} ]]; then
    if unshare -rm true 2>/dev/null; then
        QNBD_IN_USERNS=1 exec unshare -rm bash "$0" "$@"
    fi
    echo "SKIP [full_disk]: not root and no user namespaces (unshare -rm) to mount a tmpfs"
    exit 77
fi
source "$(dirname "$0")/lib/common.bash"
need qemu-img qemu-io
need_python_nbd

fs=$T/fs
mkdir "$fs" || fail "mkdir"
mount -t tmpfs -o size=48m qnbd-full-disk "$fs" || skip "cannot mount a tmpfs here"
# Lazily unmounted before the usual cleanup (which kills the server and removes $T).
trap 'rc=$?; umount -l "$fs" 2>/dev/null; (exit $rc); _cleanup' EXIT
img=$fs/a.qcow2
mkimg "$img" 256M
head -c $((16 << 20)) /dev/zero >"$fs/filler" || fail "writing the filler file"
say "tmpfs: $(df -k --output=avail "$fs" | tail -1) KiB free with a 16 MiB filler"
start_server a -t "$img"
export WRITTEN_FILE=$T/written
py full_disk.py "$(uri a)" "$fs/filler"
check_alive a "after the filesystem filled up"
grep -q "No space left on device" "${SRV_LOG[a]}" || fail "no log line for the full filesystem"
stop_server a
img_check "$img"
written=$(cat "$WRITTEN_FILE")
"$PYTHON" - "$img" "$written" "$T/a.raw" <<'PY' || fail "the image does not hold what the client wrote"
import subprocess, sys
from nbdtest import pattern
img, written, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
M = 1 << 20
subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, out], check=True)
with open(out, "rb") as f:
    raw = f.read(written)
assert len(raw) == written, f"{len(raw)} bytes read"
for i in range(written // M):
    assert raw[i * M:(i + 1) * M] == pattern(M, i), f"MiB {i} differs"
print(f"  {written >> 20} MiB in the image as written")
PY
finish
