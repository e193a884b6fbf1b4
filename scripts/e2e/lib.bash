# End-to-end harness: the Linux kernel's NBD client, in a QEMU (TCG) guest, against qnbd.
# Sourced, never run, by scripts/e2e.sh, tests/integration/e2e.sh and the host-side test
# scripts scripts/e2e/tests/*.host.sh. It sources tests/integration/lib/common.bash first
# (unless the caller already did), so $T, start_server, stop_server, img_check, fail, skip,
# track_pid ... are all available.
#
# The guest is Debian's own kernel (linux-image-amd64, fetched with apt-get download, never
# installed on the host) booting an uncompressed initramfs made of several cpio archives
# concatenated (the kernel unpacks them in order, later files win):
#   base      busybox, nbd-client, e2fsprogs, fio with their shared libraries, the kernel
#             modules needed and their load order, /dev/console; cached, see e2e_build_initramfs
#   boot      /init (guest-init.sh), /e2e/guest-lib.sh, /e2e/tests/*, /e2e/env; made per boot
#   extra     any directory given with --add (e.g. qnbd and an image from e2e_stage_qnbd)
# The guest runs one script from scripts/e2e/tests/, prints "E2E-RESULT <name> PASS|FAIL
# <detail>" on the serial console and powers off; e2e_wait_result reads it from the console log.
#
# Functions:
#   e2e_check_qemu                     skip (77) when QEMU cannot start at all
#   e2e_build_initramfs                kernel + base archive in the cache (fast when cached)
#   e2e_stage_qnbd DIR                 copy $QNBD and its shared libraries under DIR
#   e2e_boot_vm [OPTS] NAME SCRIPT [-- QEMU ARGS...]   start a VM in the background
#   e2e_wait_result NAME [SECS]        wait for the guest's result; fail unless PASS
#   e2e_wait_vm_exit NAME [SECS]       wait for the VM to power off (killed after SECS)
#   e2e_kill_vm NAME
#   e2e_run_tests [TEST...]            run host-side tests, PASS/FAIL each, nonzero if any failed
#
# Environment:
#   QNBD_E2E_CACHE   cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/qnbd-e2e)
#   E2E_ACCEL        QEMU accelerator (default tcg: KVM is not usable on the CI machines)
#   E2E_VM_MEM, E2E_VM_CPUS   guest memory (MiB, default 1024) and vCPUs (default 2)
#   E2E_VM_TIMEOUT   seconds e2e_wait_result waits for a guest's result (default 180)
#   E2E_KERNEL_ARGS  extra guest kernel command line
#   E2E_MODULES      kernel modules loaded at boot, dependencies are added (see E2E_DEFAULT_MODULES)
#   E2E_GUEST_TOOLS  extra host binaries copied (with their libraries) into the base archive
#   E2E_TEST_TIMEOUT seconds one host-side test may take in e2e_run_tests (default 300)
#   E2E_LOGDIR       keep the guests' console logs there (NAME.console) instead of in $T, and
#                    each test's server and QEMU logs in E2E_LOGDIR/TEST/

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "lib.bash is a library for the e2e tests; run scripts/e2e.sh"
    exit 0
fi

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_REPO=$(cd "$E2E_DIR/../.." && pwd)
declare -F start_server >/dev/null || source "$E2E_REPO/tests/integration/lib/common.bash"

E2E_CACHE=${QNBD_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qnbd-e2e}
E2E_ACCEL=${E2E_ACCEL:-tcg}
E2E_VM_MEM=${E2E_VM_MEM:-1024}
E2E_VM_CPUS=${E2E_VM_CPUS:-2}
E2E_VM_TIMEOUT=${E2E_VM_TIMEOUT:-180}
# crc32c_generic: ext4 and jbd2 checksum metadata with the "crc32c" crypto hash; loaded up front
# because the guest has no modules.alias for the kernel's on-demand modprobe to find it.
E2E_DEFAULT_MODULES="virtio_pci virtio_net virtio_blk nbd ext4 crc32c_generic"
E2E_MODULES=${E2E_MODULES:-$E2E_DEFAULT_MODULES}
E2E_BASE_TOOLS="/usr/bin/busybox /usr/sbin/nbd-client /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/bin/fio"
E2E_GUEST_TOOLS=${E2E_GUEST_TOOLS:-}
# In the guest, the host side of the user-mode network is 10.0.2.2; connections to
# $E2E_NBD_ADDR:10809 are forwarded to the host port given with --fwd.
E2E_NBD_ADDR=10.0.2.100

# E2E_LOGDIR: the logs of this script ($T/*.log: servers, QEMU) are kept there too, whatever the
# outcome. The copy runs before common.bash's cleanup, which gets the script's exit status.
_e2e_keep_logs() {
    local f
    mkdir -p "$E2E_LOGDIR/$TEST_NAME"
    for f in "$T"/*.log; do [[ -f $f ]] && cp "$f" "$E2E_LOGDIR/$TEST_NAME/"; done
    return 0
}
if [[ -n ${E2E_LOGDIR:-} ]]; then
    trap '_e2e_rc=$?; _e2e_keep_logs; (exit $_e2e_rc); _cleanup' EXIT
fi

declare -A E2E_VM_PID=() E2E_VM_CONSOLE=() E2E_VM_STDERR=()
E2E_RESULT=""          # PASS or FAIL, set by e2e_wait_result
E2E_RESULT_DETAIL=""   # the rest of the guest's result line

# e2e_check_qemu: the one reason the e2e tests skip (77) is a QEMU that cannot start.
e2e_check_qemu() {
    local out
    command -v qemu-system-x86_64 >/dev/null ||
        fail "qemu-system-x86_64 is not installed (scripts/install-deps.sh installs it)"
    # -S: do not run the guest; the monitor's quit ends QEMU as soon as it is up.
    if ! out=$(printf 'quit\n' | timeout 60 qemu-system-x86_64 -accel "$E2E_ACCEL" -machine q35 \
            -nodefaults -no-user-config -display none -m 64 -S -monitor stdio \
            -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 2>&1); then
        skip "QEMU cannot start: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    fi
}

# e2e_need CMD...: a missing tool is a failure here, not a skip: the only skip is a QEMU that
# cannot start, and scripts/install-deps.sh installs everything else.
e2e_need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 ||
            fail "'$c' is not installed (scripts/install-deps.sh installs what the e2e tests need)"
    done
}

_e2e_need_host_tools() {
    e2e_need socat cpio apt-cache apt-get dpkg-deb ldd objcopy flock sha256sum $E2E_BASE_TOOLS
}

# _e2e_lock NAME CMD...: runs CMD under an exclusive lock in the cache, so that concurrent runs
# (ctest and scripts/e2e.sh, say) build a cache entry once and never see a half-built one.
_e2e_lock() {
    local name=$1; shift
    mkdir -p "$E2E_CACHE"
    (
        flock -w 900 9 || { echo "e2e: cannot lock $E2E_CACHE/$name.lock" >&2; exit 1; }
        "$@"
    ) 9>"$E2E_CACHE/$name.lock"
}

# e2e_kernel: sets E2E_KDIR (the cache directory of one kernel package version, holding
# vmlinuz, vmlinux and lib/modules/KVER with a busybox-made modules.dep) and E2E_KVER.
# The package is the one linux-image-amd64 depends on now; without apt lists, the newest cached.
e2e_kernel() {
    if [[ -n ${E2E_KDIR:-} && -f ${E2E_KDIR}/vmlinuz ]]; then
        E2E_KVER=$(basename "$E2E_KDIR"/lib/modules/*)
        return 0
    fi
    local pkg ver
    # One apt-cache call (they take seconds here): the metapackage's "Depends: PKG (= VERSION)".
    read -r pkg ver < <(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
        sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -n 1) || true
    if [[ -z $ver ]]; then
        E2E_KDIR=$(ls -d "$E2E_CACHE"/kernel-*/ 2>/dev/null | sort -V | tail -n 1)
        E2E_KDIR=${E2E_KDIR%/}
        [[ -n $E2E_KDIR && -f $E2E_KDIR/vmlinuz ]] ||
            fail "no linux-image-amd64 in the apt lists and no cached kernel (run apt-get update)"
    else
        E2E_KDIR=$E2E_CACHE/kernel-$pkg-$ver
        [[ -f $E2E_KDIR/vmlinuz ]] || _e2e_lock kernel _e2e_fetch_kernel "$pkg" "$ver" ||
            fail "could not fetch the guest kernel $pkg $ver"
    fi
    E2E_KVER=$(basename "$E2E_KDIR"/lib/modules/*)
    export E2E_KDIR E2E_KVER
}

_e2e_fetch_kernel() {
    local pkg=$1 ver=$2 dir=$E2E_CACHE/kernel-$1-$2 tmp kver
    [[ -f $dir/vmlinuz ]] && return 0
    echo "e2e: fetching $pkg $ver into $E2E_CACHE" >&2
    tmp=$(mktemp -d "$E2E_CACHE/.kernel.XXXXXX")
    # apt-get download writes into the current directory; as root it warns that the _apt user
    # cannot write there, which is harmless.
    (cd "$tmp" && apt-get download -q "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed') >&2
    dpkg-deb -x "$tmp"/"${pkg}"_*.deb "$tmp/x" || { rm -rf "$tmp"; return 1; }
    kver=$(basename "$tmp"/x/lib/modules/*)
    mkdir -p "$tmp/k/lib/modules"
    mv "$tmp/x/boot/vmlinuz-$kver" "$tmp/k/vmlinuz"
    _e2e_extract_vmlinux "$tmp/k/vmlinuz" "$tmp/k/vmlinux"
    mv "$tmp/x/boot/config-$kver" "$tmp/k/config"
    mv "$tmp/x/lib/modules/$kver" "$tmp/k/lib/modules/"
    # The package has no modules.dep (the kernel's postinst runs depmod); the host may have no
    # kmod, busybox's depmod writes one.
    busybox depmod -b "$tmp/k" "$kver" || { rm -rf "$tmp"; return 1; }
    rm -rf "$dir"
    mv "$tmp/k" "$dir"
    rm -rf "$tmp"
    # Older kernel versions are of no further use.
    local old
    for old in "$E2E_CACHE"/kernel-*; do
        [[ $old == "$dir" ]] || rm -rf "$old"
    done
}

# _e2e_extract_vmlinux BZIMAGE OUT: the uncompressed kernel (an ELF with a PVH entry point),
# as the kernel's scripts/extract-vmlinux finds it. QEMU boots such an ELF directly, skipping the
# firmware's bzImage loader and the decompressor, which take seconds under TCG. Nothing is
# written when it is not found; the bzImage is booted then.
_e2e_extract_vmlinux() {
    local in=$1 out=$2 magic cmd off
    for magic in "\xFD7zXZ\x00:xz -dc" "\x28\xB5\x2F\xFD:zstd -dc" "\x1F\x8B\x08:gzip -dc"; do
        cmd=${magic#*:}
        command -v "${cmd%% *}" >/dev/null || continue
        for off in $(LC_ALL=C grep -obUaP "${magic%%:*}" "$in" | cut -d: -f1); do
            tail -c +$((off + 1)) "$in" | $cmd >"$out.tmp" 2>/dev/null
            if [[ $(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
                mv "$out.tmp" "$out"
                return 0
            fi
        done
    done
    rm -f "$out.tmp"
    return 0
}

# _e2e_module_order MODULE...: the modules' files (relative to lib/modules/KVER), each after
# everything it depends on, every one once.
_e2e_module_order() {
    local dep=$E2E_KDIR/lib/modules/$E2E_KVER/modules.dep
    awk -v want="$*" '
        function norm(s) { sub(/.*\//, "", s); sub(/\.ko(\.[a-z]+)?$/, "", s); gsub(/-/, "_", s); return s }
        function visit(m,   i, n, d) {
            if (m in done) return
            if (!(m in file)) { print "unknown module " m > "/dev/stderr"; bad = 1; return }
            done[m] = 1
            n = split(deps[m], d, " ")
            for (i = 1; i <= n; i++) visit(norm(d[i]))
            print file[m]
        }
        { f = $1; sub(/:$/, "", f); m = norm(f); file[m] = f; $1 = ""; deps[m] = $0 }
        END { n = split(want, w, " "); for (i = 1; i <= n; i++) visit(norm(w[i])); exit bad }
    ' "$dep"
}

# _e2e_libs BINARY...: the shared libraries the binaries load (ldd), the dynamic loader included.
_e2e_libs() {
    local b
    for b in "$@"; do
        ldd "$b" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
    done | sort -u
}

# _e2e_guest_path PATH: where a host file goes in the guest, whose /bin, /sbin, /lib and /lib64
# are symlinks into /usr as on Debian bookworm (so the libraries' paths from ldd work as they are).
_e2e_guest_path() {
    case $1 in
        /bin/* | /sbin/* | /lib/* | /lib64/*) echo "/usr$1" ;;
        *) echo "$1" ;;
    esac
}

# _e2e_copy_with_libs STAGE FILE...: copies the files and their libraries into STAGE.
_e2e_copy_with_libs() {
    local stage=$1 f dst; shift
    for f in "$@" $(_e2e_libs "$@"); do
        dst=$stage$(_e2e_guest_path "$f")
        [[ -e $dst ]] && continue
        mkdir -p "$(dirname "$dst")"
        cp -L "$f" "$dst"
    done
}

# _e2e_cpio_nodes OUT: appends a newc archive holding /dev/console and /dev/null. GNU cpio only
# archives nodes that exist, and making them needs root; the kernel needs /dev/console in the
# initramfs to give /init its standard streams.
_e2e_cpio_nodes() {
    local out=$1 ino=900000 len
    _entry() {  # NAME MODE(octal) MAJOR MINOR
        local n=$1 size
        printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
            $((ino++)) $((8#$2)) 0 0 1 0 0 0 0 "$3" "$4" $((${#n} + 1)) 0
        printf '%s\0' "$n"
        # Header (110 bytes) and name are padded to a multiple of 4.
        size=$(((110 + ${#n} + 1) % 4))
        ((size)) && head -c $((4 - size)) /dev/zero
        return 0
    }
    {
        _entry dev 40755 0 0
        _entry dev/console 20600 5 1
        _entry dev/null 20666 1 3
        _entry TRAILER!!! 0 0 0
    } >>"$out"
    # Pad the archive to 512 bytes, as cpio does, before the next one is appended.
    len=$(stat -c %s "$out")
    (( len % 512 )) && head -c $((512 - len % 512)) /dev/zero >>"$out"
    unset -f _entry
}

# _e2e_cpio DIR OUT: DIR's contents as a newc archive owned by root (appended to OUT).
_e2e_cpio() {
    (cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --quiet -R 0:0) >>"$2"
}

# e2e_build_initramfs: makes sure the kernel and the base archive are in the cache and sets
# E2E_KERNEL (vmlinux, or vmlinuz if it could not be extracted) and E2E_BASE_CPIO. The base
# archive's name is a hash of what goes into it (the host files with size and mtime, the
# modules, this library), so a package upgrade or a change here makes a new one and a rerun
# reuses it.
e2e_build_initramfs() {
    _e2e_need_host_tools
    e2e_kernel
    E2E_KERNEL=$E2E_KDIR/vmlinuz
    [[ -f $E2E_KDIR/vmlinux ]] && E2E_KERNEL=$E2E_KDIR/vmlinux
    local tools="$E2E_BASE_TOOLS $E2E_GUEST_TOOLS" mods key f
    mods=$(_e2e_module_order $E2E_MODULES) || fail "unknown kernel module in E2E_MODULES=$E2E_MODULES"
    key=$({
        echo "$E2E_KDIR $mods"
        for f in $tools $(_e2e_libs $tools); do stat -L -c '%n %s %Y' "$f"; done
        sha256sum <"${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16)
    E2E_BASE_CPIO=$E2E_CACHE/base-$E2E_KVER-$key.cpio
    [[ -f $E2E_BASE_CPIO ]] || _e2e_lock base _e2e_make_base "$E2E_BASE_CPIO" "$mods" $tools ||
        fail "could not build the base initramfs"
    export E2E_KDIR E2E_KVER E2E_KERNEL E2E_BASE_CPIO
}

_e2e_make_base() {
    local out=$1 mods=$2 stage m a; shift 2
    [[ -f $out ]] && return 0
    stage=$(mktemp -d "$E2E_CACHE/.base.XXXXXX")
    mkdir -p "$stage"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,proc,sys,dev,tmp,run,mnt,images,e2e}
    ln -s usr/bin "$stage/bin"; ln -s usr/sbin "$stage/sbin"
    ln -s usr/lib "$stage/lib"; ln -s usr/lib64 "$stage/lib64"
    _e2e_copy_with_libs "$stage" "$@"
    ln -s mke2fs "$stage/usr/sbin/mkfs.ext4"
    ln -s e2fsck "$stage/usr/sbin/fsck.ext4"
    cp /etc/mke2fs.conf "$stage/etc/"
    # busybox applets for every name no real tool has; modprobe in /sbin, where the kernel looks.
    for a in $(busybox --list); do
        [[ -e $stage/usr/bin/$a || -e $stage/usr/sbin/$a ]] || ln -s busybox "$stage/usr/bin/$a"
    done
    ln -sf ../bin/busybox "$stage/usr/sbin/modprobe"
    echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
    echo "root:x:0:" >"$stage/etc/group"
    # The modules, and the order /init loads them in.
    for m in $mods; do
        mkdir -p "$stage/lib/modules/$E2E_KVER/$(dirname "$m")"
        cp "$E2E_KDIR/lib/modules/$E2E_KVER/$m" "$stage/lib/modules/$E2E_KVER/$m"
        echo "$m" >>"$stage/lib/modules/$E2E_KVER/e2e-load-order"
    done
    cp "$E2E_KDIR/lib/modules/$E2E_KVER/modules.dep" "$stage/lib/modules/$E2E_KVER/" 2>/dev/null || true
    rm -f "$out.tmp"
    _e2e_cpio "$stage" "$out.tmp" && _e2e_cpio_nodes "$out.tmp" || { rm -rf "$stage" "$out.tmp"; return 1; }
    rm -rf "$stage"
    mv "$out.tmp" "$out"
    # Older archives go, except the latest few and any made in the last hour (another checkout's
    # run may still be using it).
    find "$E2E_CACHE" -maxdepth 1 -name 'base-*.cpio' -mmin +60 -printf '%T@ %p\n' |
        sort -rn | tail -n +3 | cut -d' ' -f2- | xargs -r rm -f
}

# e2e_stage_qnbd DIR: $QNBD (debug info stripped, symbols kept) at DIR/usr/bin/qnbd, with its
# shared libraries; give DIR to e2e_boot_vm --add.
e2e_stage_qnbd() {
    local dir=$1 dst
    _e2e_copy_with_libs "$dir" $(_e2e_libs "$QNBD")
    dst=$dir/usr/bin/qnbd
    mkdir -p "$dir/usr/bin"
    objcopy --strip-debug "$QNBD" "$dst" 2>/dev/null || cp "$QNBD" "$dst"
    chmod 755 "$dst"
}

# e2e_out_disk SIZE: the raw disk through which the guest hands images back as a tar stream
# (tar stops at its end marker, so SIZE only has to hold them). Its qemu arguments are left in
# E2E_OUT_ARGS for e2e_boot_vm.
e2e_out_disk() {
    truncate -s "$1" "$T/out.raw"
    E2E_OUT_ARGS=(-drive "file=$T/out.raw,format=raw,if=none,id=out0,cache=unsafe"
        -device virtio-blk-pci,drive=out0)
}

# e2e_out_images NAME...: unpacks the output disk into $T/out; each NAME.qcow2 must be there
# and pass img_check (clean, no leaks).
e2e_out_images() {
    mkdir -p "$T/out"
    tar -xf "$T/out.raw" -C "$T/out" || fail "no image in the guest's output disk"
    local n
    for n in "$@"; do
        [[ -f $T/out/$n.qcow2 ]] || fail "$n.qcow2 is not in the guest's output"
        img_check "$T/out/$n.qcow2"
    done
}

# e2e_out_raw NAME: $T/out/NAME.qcow2 converted to $T/NAME.raw.
e2e_out_raw() {
    qemu-img convert -f qcow2 -O raw "$T/out/$1.qcow2" "$T/$1.raw" || fail "qemu-img convert $1"
}

# e2e_out_ext4 NAME: $T/out/NAME.qcow2 holds a clean ext4 file system (e2fsck -fn on the host).
e2e_out_ext4() {
    e2e_out_raw "$1"
    e2fsck -fn "$T/$1.raw" >"$T/e2fsck.log" 2>&1 || { cat "$T/e2fsck.log" >&2; fail "e2fsck on the host"; }
}

_e2e_sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# e2e_boot_vm [--fwd PORT | --fwd GUESTPORT=PORT]... [--env KEY=VALUE]... [--add DIR]...
#             [--cpus N] NAME SCRIPT [-- QEMU ARGS...]
# Boots a VM in the background that runs scripts/e2e/tests/SCRIPT and reports as NAME.
#   --fwd PORT            guest connections to 10.0.2.100:10809 go to 127.0.0.1:PORT on the host
#   --fwd GPORT=PORT      the same for guest port GPORT
#   --env KEY=VALUE       exported to the guest script (ASAN_OPTIONS and UBSAN_OPTIONS always are);
#                         E2E_NBD_ERRORS_OK=1 lets a test pass with NBD errors in the guest's
#                         kernel log (see nbd_kernel_errors in guest-lib.sh)
#   --add DIR             DIR's tree is added to the guest's root file system
#   --cpus N              vCPUs (default $E2E_VM_CPUS). The kernel's NBD client maps each CPU to
#                         one connection, so N connections carry I/O only with N CPUs or more.
# The console goes to $T/NAME.console (or $E2E_LOGDIR/NAME.console). The network is user-mode
# with restrict=on: the guest reaches the forwarded ports and nothing else.
e2e_boot_vm() {
    local fwds=() envs=() adds=() cpus=$E2E_VM_CPUS name script
    while (($#)); do
        case $1 in
            --fwd) fwds+=("$2"); shift 2 ;;
            --env) envs+=("$2"); shift 2 ;;
            --add) adds+=("$2"); shift 2 ;;
            --cpus) cpus=$2; shift 2 ;;
            *) break ;;
        esac
    done
    name=$1 script=$2; shift 2
    [[ ${1:-} == -- ]] && shift
    [[ -f $E2E_DIR/tests/$script ]] || fail "no guest script scripts/e2e/tests/$script"
    [[ -n ${E2E_BASE_CPIO:-} ]] || e2e_build_initramfs

    local boot=$T/$name.boot initrd=$T/$name.initrd console=${E2E_LOGDIR:-$T}/$name.console f kv netdev
    [[ -z ${E2E_LOGDIR:-} ]] || mkdir -p "$E2E_LOGDIR"
    rm -rf "$boot"; mkdir -p "$boot/e2e"
    cp "$E2E_DIR/guest-init.sh" "$boot/init"; chmod 755 "$boot/init"
    cp "$E2E_DIR/guest-lib.sh" "$boot/e2e/"
    cp -r "$E2E_DIR/tests" "$boot/e2e/tests"
    {
        echo "export E2E_NAME=$(_e2e_sq "$name") E2E_SCRIPT=$(_e2e_sq "$script")"
        echo "export E2E_KVER=$(_e2e_sq "$E2E_KVER") NBD_HOST=$E2E_NBD_ADDR NBD_PORT=10809"
        echo "export ASAN_OPTIONS=$(_e2e_sq "${ASAN_OPTIONS:-}") UBSAN_OPTIONS=$(_e2e_sq "${UBSAN_OPTIONS:-}")"
        for kv in "${envs[@]}"; do echo "export ${kv%%=*}=$(_e2e_sq "${kv#*=}")"; done
    } >"$boot/e2e/env"
    cp "$E2E_BASE_CPIO" "$initrd"
    _e2e_cpio "$boot" "$initrd"
    for f in "${adds[@]}"; do _e2e_cpio "$f" "$initrd"; done

    # guestfwd with cmd: runs socat once per guest connection, so each of nbd-client -C N's
    # connections is its own TCP connection to the server.
    netdev=user,id=net0,restrict=on
    for f in "${fwds[@]}"; do
        if [[ $f == *=* ]]; then
            netdev+=",guestfwd=tcp:$E2E_NBD_ADDR:${f%%=*}-cmd:$(command -v socat) - TCP:127.0.0.1:${f#*=}"
        else
            netdev+=",guestfwd=tcp:$E2E_NBD_ADDR:10809-cmd:$(command -v socat) - TCP:127.0.0.1:$f"
        fi
    done

    : >"$console"
    # panic=-1 with -no-reboot: a guest that panics (or whose /init dies) ends QEMU at once.
    qemu-system-x86_64 -name "e2e-$name" -accel "$E2E_ACCEL" -machine q35 -cpu max \
        -smp "$cpus" -m "$E2E_VM_MEM" -nodefaults -no-user-config -display none \
        -monitor none -no-reboot \
        -kernel "$E2E_KERNEL" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 mitigations=off ${E2E_KERNEL_ARGS:-}" \
        -netdev "$netdev" -device virtio-net-pci,netdev=net0 \
        -chardev "file,id=con0,path=$console" -serial chardev:con0 \
        "$@" </dev/null >"$T/$name.qemu.log" 2>&1 &
    E2E_VM_PID[$name]=$!
    E2E_VM_CONSOLE[$name]=$console
    E2E_VM_STDERR[$name]=$T/$name.qemu.log
    track_pid "${E2E_VM_PID[$name]}"
    say "vm '$name' pid ${E2E_VM_PID[$name]}: $script"
}

e2e_vm_alive() { alive "${E2E_VM_PID[$1]}"; }

e2e_kill_vm() {
    local pid=${E2E_VM_PID[$1]}
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    return 0
}

_e2e_dump_console() {
    local name=$1
    echo "----- vm '$name' console (${E2E_VM_CONSOLE[$name]}), last 200 lines -----" >&2
    tail -n 200 "${E2E_VM_CONSOLE[$name]}" | tr -d '\r' >&2
    if [[ -s ${E2E_VM_STDERR[$name]} ]]; then
        echo "----- vm '$name' qemu output -----" >&2
        tail -n 20 "${E2E_VM_STDERR[$name]}" >&2
    fi
}

# _e2e_vm_failed NAME MSG: a VM that never got to print anything because QEMU did not start is
# a skip (77); everything else is a failure.
_e2e_vm_failed() {
    local name=$1 msg=$2
    if [[ ! -s ${E2E_VM_CONSOLE[$name]} ]] && ! e2e_vm_alive "$name" && [[ -s ${E2E_VM_STDERR[$name]} ]]; then
        skip "QEMU cannot start: $(tail -n 3 "${E2E_VM_STDERR[$name]}" | tr '\n' ' ')"
    fi
    e2e_kill_vm "$name"
    _e2e_dump_console "$name"
    fail "vm '$name': $msg"
}

# e2e_wait_result NAME [SECS=$E2E_VM_TIMEOUT]: waits for the guest's E2E-RESULT line, then for
# the VM to power off. Sets E2E_RESULT and E2E_RESULT_DETAIL; fails (with the console's tail) unless PASS,
# on a timeout (the VM is killed) or when the VM ends without a result.
e2e_wait_result() {
    local name=$1 secs=${2:-$E2E_VM_TIMEOUT} line deadline
    deadline=$((SECONDS + secs))
    E2E_RESULT="" E2E_RESULT_DETAIL=""
    while :; do
        line=$(tr -d '\r' <"${E2E_VM_CONSOLE[$name]}" | grep -a -m1 "^E2E-RESULT $name ") && break
        if ! e2e_vm_alive "$name"; then
            # The line may have been written just before QEMU exited.
            line=$(tr -d '\r' <"${E2E_VM_CONSOLE[$name]}" | grep -a -m1 "^E2E-RESULT $name ") && break
            _e2e_vm_failed "$name" "ended without a result"
        fi
        ((SECONDS < deadline)) || _e2e_vm_failed "$name" "no result after $secs s"
        sleep 0.2
    done
    line=${line#"E2E-RESULT $name "}
    E2E_RESULT=${line%% *}
    E2E_RESULT_DETAIL=""
    [[ $line == *" "* ]] && E2E_RESULT_DETAIL=${line#* }
    say "vm '$name': $E2E_RESULT $E2E_RESULT_DETAIL"
    if [[ $E2E_RESULT != PASS ]]; then
        e2e_wait_vm_exit "$name" 20
        _e2e_dump_console "$name"
        fail "guest test '$name': $E2E_RESULT $E2E_RESULT_DETAIL"
    fi
    e2e_wait_vm_exit "$name" 30
}

# e2e_wait_vm_exit NAME [SECS=30]: waits for the VM to power off; kills it and fails after SECS.
e2e_wait_vm_exit() {
    local name=$1 secs=${2:-30} pid=${E2E_VM_PID[$1]} deadline
    deadline=$((SECONDS + secs))
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            e2e_kill_vm "$name"
            _e2e_dump_console "$name"
            fail "vm '$name' did not power off within $secs s"
        fi
        sleep 0.1
    done
    wait "$pid" 2>/dev/null
    return 0
}

# e2e_list_tests: the host-side tests, scripts/e2e/tests/NAME.host.sh, by NAME.
e2e_list_tests() {
    local f
    for f in "$E2E_DIR"/tests/*.host.sh; do
        f=$(basename "$f")
        echo "${f%.host.sh}"
    done
}

# e2e_run_tests [TEST...]: checks QEMU starts, builds the initramfs once, then runs each test
# (all by default) as its own process, printing PASS/FAIL/SKIP and the time it took. Returns 0
# when all passed, 1 otherwise; exits 77 (skip) when QEMU cannot start, 1 (fail) when the
# initramfs cannot be built.
e2e_run_tests() {
    local tests=("$@") t rc start nfail=0 npass=0 nskip=0 out
    ((${#tests[@]})) || mapfile -t tests < <(e2e_list_tests)
    for t in "${tests[@]}"; do
        [[ -f $E2E_DIR/tests/$t.host.sh ]] || { echo "FAIL $t: no scripts/e2e/tests/$t.host.sh"; return 1; }
    done
    e2e_check_qemu
    start=$SECONDS
    e2e_build_initramfs
    say "initramfs ready in $((SECONDS - start)) s: $E2E_BASE_CPIO ($(du -h "$E2E_BASE_CPIO" | cut -f1))"
    for t in "${tests[@]}"; do
        out=$T/e2e-$t.out
        start=$SECONDS
        timeout --kill-after=10 "${E2E_TEST_TIMEOUT:-300}" bash "$E2E_DIR/tests/$t.host.sh" >"$out" 2>&1
        rc=$?
        case $rc in
            0) echo "PASS $t ($((SECONDS - start)) s)"; npass=$((npass + 1)) ;;
            77) echo "SKIP $t: $(grep -m1 '^SKIP' "$out" | sed 's/^SKIP [^:]*: //')"; nskip=$((nskip + 1)) ;;
            *)
                ((rc == 124)) && echo "timed out after ${E2E_TEST_TIMEOUT:-300} s" >>"$out"
                echo "----- $t output (last 400 lines; E2E_LOGDIR=DIR keeps all logs) -----"
                tail -n 400 "$out"
                echo "FAIL $t (exit $rc, $((SECONDS - start)) s)"; nfail=$((nfail + 1)) ;;
        esac
    done
    echo "e2e: PASS $npass, FAIL $nfail, SKIP $nskip"
    ((nfail == 0)) || return 1
    ((npass > 0 || nskip == 0)) || return 77
    return 0
}
