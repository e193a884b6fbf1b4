#!/bin/bash
# The installed units under a real systemd (252+) manager, with their whole sandbox: a private
# systemd runs as PID 1 of new pid, mount, network, UTS and IPC namespaces, with /etc, /usr and
# /var as overlays whose writes land in $T, so that installing qnbd there (the DESTDIR tree of
# cmake --install copied in), systemd-sysusers and the services change nothing on the host.
#   qnbd@.socket + qnbd@.service: socket activation on /run/qnbd/NAME.sock and (drop-in) TCP,
#   readiness and status, user qnbd with no capabilities, NoNewPrivileges, a seccomp filter and
#   a mount namespace; /var/lib/qnbd created and chowned; images elsewhere read-only unless a
#   ReadWritePaths= drop-in adds them; -s in the private /var/tmp; journal priorities without
#   timestamps; a clean image after systemctl stop.
#   qnbd-attach@.service: attaches /dev/nbd0 when the machine has it (unused); otherwise the
#   sandbox is set up and qnbd itself reports the missing device.
# The test drop-ins only drop the units' default dependencies (no sysinit.target in this
# manager) and turn LeakSanitizer off: it needs ptrace, which the seccomp filter forbids.
source "$(dirname "$0")/lib/common.bash"
need cmake unshare nsenter nbdinfo nbdcopy qemu-img qemu-io
[[ $(id -u) == 0 ]] || skip "needs root (namespaces, overlay mounts)"
[[ -x /lib/systemd/systemd ]] || skip "no systemd (/lib/systemd/systemd)"
grep -qw overlay /proc/filesystems || skip "no overlayfs in this kernel"
B=${QNBD_BUILD_DIR:-$(dirname "$QNBD")}

R=$T/root
DESTDIR=$R cmake --install "$B" --prefix /usr >"$T/install.log" 2>&1 ||
    { cat "$T/install.log" >&2; fail "cmake --install failed"; }

cat >"$T/boot.sh" <<BOOT
#!/bin/bash
set -e
mount -t tmpfs -o mode=755 tmpfs /run
for d in etc usr var; do
    mkdir -p "$T/ov/\$d/up" "$T/ov/\$d/work"
    mount -t overlay overlay -o "lowerdir=/\$d,upperdir=$T/ov/\$d/up,workdir=$T/ov/\$d/work" "/\$d"
done
mkdir -p /run/systemd/system
printf '[Unit]\nDescription=qnbd test\nDefaultDependencies=no\n' >/run/systemd/system/qnbd-test.target
exec env -i container=qnbd-test PATH=/usr/sbin:/usr/bin:/sbin:/bin /lib/systemd/systemd \
    --system --unit=qnbd-test.target --log-target=console
BOOT
chmod +x "$T/boot.sh"
setsid unshare --pid --fork --mount --uts --ipc --net --propagation private --mount-proc \
    "$T/boot.sh" >"$T/systemd.log" 2>&1 &
UNSHARE=$!
NSPID=""
for ((i = 0; i < 100; i++)); do
    NSPID=$(cat "/proc/$UNSHARE/task/$UNSHARE/children" 2>/dev/null | awk '{print $1}')
    [[ -n $NSPID ]] && break
    sleep 0.05
done
[[ -n $NSPID ]] || fail "unshare did not start: $(cat "$T/systemd.log")"
# Killing the namespace's PID 1 ends everything in it (SIGTERM would only make systemd
# re-execute itself); $T is removed only after.
kill_ns() {
    kill -KILL "$NSPID" 2>/dev/null
    for ((i = 0; i < 100; i++)); do alive "$UNSHARE" || break; sleep 0.05; done
    wait "$UNSHARE" 2>/dev/null
}
trap 'rc=$?; kill_ns; (exit $rc); _cleanup' EXIT
# ns CMD...: CMD inside the namespaces; ns_t SECS CMD...: the same with a time limit.
ns() { nsenter -t "$NSPID" -m -p -u -i -n --wd=/ -- "$@"; }
ns_t() { local secs=$1; shift; run_t "$secs" nsenter -t "$NSPID" -m -p -u -i -n --wd=/ -- "$@"; }
for ((i = 0; i < 300; i++)); do
    state=$(ns systemctl is-system-running 2>/dev/null)
    [[ $state == running || $state == degraded ]] && break
    sleep 0.1
done
[[ $state == running || $state == degraded ]] ||
    fail "the private systemd did not come up ($state): $(tail -20 "$T/systemd.log")"
say "private systemd $(ns systemctl --version | head -1 | cut -d' ' -f2) is $state"

# "Installing the package": the files, the user, the journal.
ns cp -a "$R/usr/." /usr/ || fail "copying the installed tree"
ns systemd-sysusers || fail "systemd-sysusers"
ns getent passwd qnbd >/dev/null || fail "systemd-sysusers created no qnbd user"
ns systemctl start systemd-journald.socket systemd-journald.service || fail "journald"
for u in qnbd@.service qnbd@.socket qnbd-attach@.service; do
    ns mkdir -p "/run/systemd/system/$u.d"
    printf '[Unit]\nDefaultDependencies=no\n' | ns tee "/run/systemd/system/$u.d/test.conf" >/dev/null
done
for u in qnbd@.service qnbd-attach@.service; do
    printf '[Service]\nEnvironment=ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1\n' |
        ns tee -a "/run/systemd/system/$u.d/test.conf" >/dev/null
done
ns systemctl daemon-reload || fail "daemon-reload"

# show UNIT PROPERTY: one property's value.
show() { ns systemctl show -P "$2" "$1"; }
# journal UNIT: PRIORITY MESSAGE lines of the unit's log.
journal() { ns journalctl -q -u "$1" -o json --no-pager | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    print(e.get("PRIORITY"), e.get("MESSAGE"))'; }
# journal_has UNIT REGEX: the unit's journal has a line matching REGEX ("PRIORITY MESSAGE").
journal_has() { journal "$1" >"$T/jh.txt"; grep -qE "$2" "$T/jh.txt"; }
# stopped UNIT: inactive, and its last run exited 0.
stopped() {
    [[ $(show "$1" ActiveState) == inactive && $(show "$1" Result) == success &&
        $(show "$1" ExecMainStatus) == 0 ]] ||
        fail "$1: $(show "$1" ActiveState)/$(show "$1" Result), status $(show "$1" ExecMainStatus): $(journal "$1" | tail -5)"
}
# clean_journal UNIT: no sanitizer report, every line info or worse, none with a timestamp.
clean_journal() {
    journal "$1" >"$T/j.txt"
    grep -E "Sanitizer|runtime error|internal error" "$T/j.txt" && fail "$1: sanitizer or internal error"
    grep -qE "^[0-9] [0-9]{4}-[0-9]{2}-[0-9]{2} " "$T/j.txt" && fail "$1: a log line with its own timestamp"
    return 0
}

# An export on its unix socket, the image in /var/lib/qnbd (created root-owned: the service
# hands it to qnbd).
ns mkdir -p /etc/qnbd /var/lib/qnbd
ns qnbd create /var/lib/qnbd/disk1.qcow2 64M >/dev/null || fail "qnbd create"
echo 'QNBD_ARGS="-t -e 0"' | ns tee /etc/qnbd/disk1.conf >/dev/null
ns systemctl enable --now qnbd@disk1.socket 2>/dev/null || fail "qnbd@disk1.socket did not start"
[[ $(ns systemctl is-enabled qnbd@disk1.socket) == enabled ]] || fail "qnbd@disk1.socket is not enabled"
[[ $(ns stat -c '%U:%G %a' /run/qnbd/disk1.sock) == "root:qnbd 660" ]] ||
    fail "socket: $(ns stat -c '%U:%G %a' /run/qnbd/disk1.sock)"
U="nbd+unix:///disk1?socket=/run/qnbd/disk1.sock"
ns_t 30 nbdinfo "$U" >"$T/nbdinfo.txt" || fail "nbdinfo $U: $(journal qnbd@disk1.service | tail -5)"
grep -q 'export="disk1":' "$T/nbdinfo.txt" || fail "nbdinfo: $(cat "$T/nbdinfo.txt")"
head -c 8M /dev/urandom >"$T/data"
ns_t 60 nbdcopy "$T/data" "$U" || fail "nbdcopy into $U: $(journal qnbd@disk1.service | tail -5)"
ns_t 60 nbdcopy "$U" "$T/back" || fail "nbdcopy from $U"
cmp -n $((8 << 20)) "$T/data" "$T/back" || fail "what was read back differs"
[[ $(show qnbd@disk1.service ActiveState) == active ]] || fail "qnbd@disk1.service with -t is not running"
[[ $(show qnbd@disk1.service StatusText) == "serving unix socket /run/qnbd/disk1.sock" ]] ||
    fail "status: $(show qnbd@disk1.service StatusText)"
pid=$(show qnbd@disk1.service MainPID)
st=$(ns cat "/proc/$pid/status")
grep -qE "^Uid:\s+$(ns id -u qnbd)\s" <<<"$st" || fail "qnbd does not run as user qnbd: $(grep Uid <<<"$st")"
grep -qE "^CapEff:\s+0+$" <<<"$st" || fail "qnbd has capabilities: $(grep CapEff <<<"$st")"
grep -qE "^CapBnd:\s+0+$" <<<"$st" || fail "qnbd's bounding set is not empty: $(grep CapBnd <<<"$st")"
grep -qE "^NoNewPrivs:\s+1$" <<<"$st" || fail "NoNewPrivileges is off"
grep -qE "^Seccomp:\s+2$" <<<"$st" || fail "no seccomp filter: $(grep Seccomp <<<"$st")"
[[ $(ns readlink "/proc/$pid/ns/mnt") != $(ns readlink /proc/1/ns/mnt) ]] || fail "no mount namespace of its own"
[[ $(ns readlink "/proc/$pid/ns/net") != $(ns readlink /proc/1/ns/net) ]] || fail "no network namespace of its own"
[[ $(ns stat -c '%U:%G %a' /var/lib/qnbd) == "qnbd:qnbd 750" ]] || fail "/var/lib/qnbd: $(ns stat -c '%U:%G %a' /var/lib/qnbd)"
[[ $(ns stat -c %U /var/lib/qnbd/disk1.qcow2) == qnbd ]] || fail "the image was not handed to qnbd"
ns systemctl stop qnbd@disk1.service 2>/dev/null
stopped qnbd@disk1.service
ns qemu-img check -q /var/lib/qnbd/disk1.qcow2 || fail "the image is not clean after systemctl stop"
clean_journal qnbd@disk1.service
grep -q "^6 listening on unix socket /run/qnbd/disk1.sock (socket activation)$" "$T/j.txt" ||
    fail "no info line about the activated socket: $(head -3 "$T/j.txt")"
say "ok: qnbd@disk1 on its unix socket: as qnbd, no capabilities, NoNewPrivs, seccomp, own mount and network namespaces; clean stop"

# -s: the overlay goes to the private /var/tmp, the image is left as it was.
before=$(ns md5sum /var/lib/qnbd/disk1.qcow2)
echo 'QNBD_ARGS="-t -s"' | ns tee /etc/qnbd/disk1.conf >/dev/null
ns_t 60 nbdcopy "$T/data" "$U" || fail "nbdcopy with -s: $(journal qnbd@disk1.service | tail -3)"
ns systemctl stop qnbd@disk1.service 2>/dev/null
stopped qnbd@disk1.service
[[ $(ns md5sum /var/lib/qnbd/disk1.qcow2) == "$before" ]] || fail "-s changed the image"
say "ok: -s writes to an overlay in the private /var/tmp"

# An image outside /var/lib/qnbd: read-only is allowed; writing needs a ReadWritePaths= drop-in.
ns mkdir -p /var/images
ns qnbd create /var/images/disk2.qcow2 16M >/dev/null
ns chown -R qnbd:qnbd /var/images
printf 'QNBD_IMAGE=/var/images/disk2.qcow2\nQNBD_ARGS=\n' | ns tee /etc/qnbd/disk2.conf >/dev/null
ns systemctl start qnbd@disk2.socket
U2="nbd+unix:///disk2?socket=/run/qnbd/disk2.sock"
ns_t 30 nbdinfo --size "$U2" >/dev/null 2>&1 && fail "an image outside /var/lib/qnbd was opened read-write"
for ((i = 0; i < 100; i++)); do [[ $(show qnbd@disk2.service ActiveState) == failed ]] && break; sleep 0.05; done
journal_has qnbd@disk2.service "^3 cannot open /var/images/disk2.qcow2: Read-only file system$" ||
    fail "no error line for the read-only image: $(journal qnbd@disk2.service | tail -3)"
ns systemctl stop qnbd@disk2.socket
ns systemctl reset-failed qnbd@disk2.service qnbd@disk2.socket
printf 'QNBD_IMAGE=/var/images/disk2.qcow2\nQNBD_ARGS=-r\n' | ns tee /etc/qnbd/disk2.conf >/dev/null
ns systemctl start qnbd@disk2.socket
[[ $(ns_t 30 nbdinfo --size "$U2") == $((16 << 20)) ]] || fail "-r of an image outside /var/lib/qnbd"
for ((i = 0; i < 100; i++)); do [[ $(show qnbd@disk2.service ActiveState) == inactive ]] && break; sleep 0.05; done
stopped qnbd@disk2.service
ns mkdir -p /etc/systemd/system/qnbd@disk2.service.d
printf '[Service]\nReadWritePaths=/var/images\n' | ns tee /etc/systemd/system/qnbd@disk2.service.d/images.conf >/dev/null
printf 'QNBD_IMAGE=/var/images/disk2.qcow2\nQNBD_ARGS=\n' | ns tee /etc/qnbd/disk2.conf >/dev/null
ns systemctl daemon-reload
ns_t 60 nbdcopy "$T/data" "$U2" 2>/dev/null
printf 'hello' >"$T/hello"
ns_t 60 nbdcopy "$T/hello" "$U2" || fail "nbdcopy with ReadWritePaths=: $(journal qnbd@disk2.service | tail -3)"
for ((i = 0; i < 100; i++)); do [[ $(show qnbd@disk2.service ActiveState) == inactive ]] && break; sleep 0.05; done
stopped qnbd@disk2.service
[[ $(ns qemu-io -f qcow2 -r -c "read -P 0x68 0 1" /var/images/disk2.qcow2 | grep -c "^read") == 1 ]] ||
    fail "the write did not reach /var/images/disk2.qcow2"
clean_journal qnbd@disk2.service
say "ok: an image outside /var/lib/qnbd: refused read-write (error priority), served with -r, writable with ReadWritePaths="

# TCP through a socket drop-in; an empty QNBD_EXPORT serves the default export; without -t
# the service ends with its client.
ns mkdir -p /etc/systemd/system/qnbd@disk1.socket.d
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:10809\n' |
    ns tee /etc/systemd/system/qnbd@disk1.socket.d/tcp.conf >/dev/null
printf 'QNBD_EXPORT=\nQNBD_ARGS=\n' | ns tee /etc/qnbd/disk1.conf >/dev/null
ns systemctl daemon-reload
ns systemctl restart qnbd@disk1.socket
[[ $(ns_t 30 nbdinfo --size nbd://127.0.0.1:10809/) == $((64 << 20)) ]] ||
    fail "TCP export: $(journal qnbd@disk1.service | tail -3)"
for ((i = 0; i < 100; i++)); do [[ $(show qnbd@disk1.service ActiveState) == inactive ]] && break; sleep 0.05; done
stopped qnbd@disk1.service
journal_has qnbd@disk1.service "^6 listening on 127.0.0.1:10809 \\(socket activation\\)$" ||
    fail "TCP socket not logged: $(journal qnbd@disk1.service | tail -3)"
clean_journal qnbd@disk1.service
say "ok: TCP socket drop-in, the default export, the service gone with its client"

# qnbd-attach@nbd0.service.
printf 'QNBD_IMAGE=/var/lib/qnbd/disk1.qcow2\n' | ns tee /etc/qnbd/attach-nbd0.conf >/dev/null
if [[ -b /dev/nbd0 && $(cat /sys/block/nbd0/size 2>/dev/null || echo 0) == 0 ]]; then
    ns_t 60 systemctl enable --now qnbd-attach@nbd0.service ||
        fail "qnbd-attach@nbd0 did not start: $(journal qnbd-attach@nbd0.service | tail -5)"
    [[ $(cat /sys/block/nbd0/size) == $(((64 << 20) / 512)) ]] || fail "/dev/nbd0 size $(cat /sys/block/nbd0/size)"
    [[ $(show qnbd-attach@nbd0.service StatusText) == "attached to /dev/nbd0" ]] ||
        fail "status: $(show qnbd-attach@nbd0.service StatusText)"
    cmp -n $((8 << 20)) "$T/data" /dev/nbd0 || fail "/dev/nbd0 does not hold the image"
    ns_t 60 systemctl stop qnbd-attach@nbd0.service
    stopped qnbd-attach@nbd0.service
    [[ $(cat /sys/block/nbd0/size) == 0 ]] || fail "/dev/nbd0 still attached after systemctl stop"
    clean_journal qnbd-attach@nbd0.service
    say "ok: qnbd-attach@nbd0 attached /dev/nbd0 (READY after the attach) and detached it on stop"
else
    ns_t 60 systemctl enable --now qnbd-attach@nbd0.service 2>/dev/null && fail "qnbd-attach@nbd0 started without /dev/nbd0"
    [[ $(show qnbd-attach@nbd0.service ExecMainStatus) == 1 ]] ||
        fail "qnbd-attach@nbd0: status $(show qnbd-attach@nbd0.service ExecMainStatus) (sandbox setup failed?)"
    journal_has qnbd-attach@nbd0.service "^3 cannot open /dev/nbd0: No such file or directory" ||
        fail "qnbd-attach@nbd0: $(journal qnbd-attach@nbd0.service | tail -3)"
    [[ $(ns systemctl is-enabled qnbd-attach@nbd0.service) == enabled ]] || fail "qnbd-attach@nbd0 not enabled"
    say "ok: qnbd-attach@nbd0: enabled, sandbox set up, qnbd reports the missing /dev/nbd0 (no nbd device here: attach not run)"
fi
finish
