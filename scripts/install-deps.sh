#!/usr/bin/env bash
# Installs everything qnbd needs to build and test, from Debian bookworm packages.
# Idempotent: packages already present are left alone.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build pkg-config git clang-format clang-tidy
  # The fuzz targets: clang 14, and libFuzzer with FuzzedDataProvider.h (libclang-rt-14-dev).
  clang-14 libclang-rt-14-dev
  libboost1.81-dev liburing-dev libspdlog-dev libfmt-dev libcli11-dev catch2
  libnbd-dev zlib1g-dev libzstd-dev libsystemd-dev libgnutls28-dev
  # tcmalloc_minimal, qnbd's allocator outside the sanitizer builds.
  libgoogle-perftools-dev
  # TLS test credentials (certtool, psktool).
  gnutls-bin
  qemu-utils libnbd-bin python3-libnbd fio nbdkit
  qemu-system-x86 socat busybox-static cpio nbd-client e2fsprogs xz-utils
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
