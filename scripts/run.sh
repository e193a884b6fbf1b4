#!/usr/bin/env bash
# Serves IMAGE over NBD (default 127.0.0.1:10809; extra qnbd options may follow the image).
# Without an image, serves demo.qcow2: a sparse 10 GiB qcow2 made by qnbd itself.
# Installs what it needs and builds a Release qnbd at build/qnbd first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DQNBD_SANITIZE=OFF -DQNBD_TESTS=OFF >/dev/null
cmake --build build --target qnbd -j "$(nproc)"
if [ $# -eq 0 ]; then
  [ -f demo.qcow2 ] || build/qnbd create demo.qcow2 10G
  set -- demo.qcow2
fi
image=$1
shift
# Where the server will listen, from the options given (the last one of each wins, as in qnbd).
host=127.0.0.1 port=10809 socket=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  a=${args[i]} next=${args[i + 1]:-}
  case $a in
    -p | --port) port=$next ;;
    --port=*) port=${a#*=} ;;
    -b | --bind) host=$next ;;
    --bind=*) host=${a#*=} ;;
    -k | --socket) socket=$next ;;
    --socket=*) socket=${a#*=} ;;
  esac
done
[[ $host == *:* ]] && host="[$host]"
if [[ -n $socket ]]; then
  uri="nbd+unix:///?socket=$socket"
else
  uri="nbd://$host:$port"
fi
echo "Serving $image on $uri (Ctrl-C to stop). Try: nbdinfo $uri"
exec build/qnbd --persistent --shared=0 "$@" "$image"
