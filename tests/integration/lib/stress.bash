# Shared by stress.sh and stress_more.sh: run py/stress.py against a server on an image and
# check the image against the byte model afterwards. Sourced after common.bash.

SECS=${QNBD_STRESS_SECONDS:-2}

# scenario NAME IMAGE SEED [SERVER OPTIONS...]: model from the image, stress with 6 connections,
# clean shutdown, qemu-img check (qcow2), and qemu-img compare with the model.
scenario() {
    local name=$1 img=$2 seed=$3 fmt=qcow2; shift 3   # then extra server options
    [[ " $* " == *" raw "* ]] && fmt=raw
    qemu-img convert -O raw "$img" "$name.model" || fail "qemu-img convert $img"
    start_server "$name" -t -e 0 --discard=unmap "$@" "$T/$img"
    py stress.py "$(uri "$name")" "$name.model" "$name.result" 6 "$SECS" "$seed"
    check_alive "$name" "after the stress run"
    stop_server "$name"
    [[ $fmt == qcow2 ]] && img_check "$img"
    out=$(qemu-img compare -f raw -F $fmt "$name.result" "$img" 2>&1) || fail "$name: image differs from the model: $out"
}
