#!/usr/bin/env bash
# Serves IMAGE over NBD on 127.0.0.1:10809 (extra qnbd options may follow the image).
# Without an image, serves demo.qcow2: a sparse 10 GiB qcow2 made by qnbd itself.
# Installs what it needs and builds a Release qnbd at build/qnbd first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DQNBD_SANITIZE=OFF -DQNBD_TESTS=OFF >/dev/null
cmake --build build --target qnbd
if [ $# -eq 0 ]; then
  [ -f demo.qcow2 ] || build/qnbd create demo.qcow2 10G
  set -- demo.qcow2
fi
image=$1
shift
echo "Serving $image on nbd://127.0.0.1:10809 (Ctrl-C to stop). Try: nbdinfo nbd://127.0.0.1:10809"
exec build/qnbd --persistent --shared=0 "$@" "$image"
