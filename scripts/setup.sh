#!/usr/bin/env bash
# Installs every build and test dependency of vuf from Debian's archive.
# Idempotent: packages already present are left alone. Needs root (or sudo).
set -euo pipefail

PKGS=(
  meson ninja-build gcc g++ clang clang-format pkg-config git  # build (g++: C++ header test), format check
  libcmocka-dev libjson-c-dev                   # unit tests, JSON output
  libclang-rt-dev                               # libFuzzer + sanitizer runtimes
  qemu-system-common                            # qemu-storage-daemon, C virtiofsd
  qemu-system-gui                               # vhost-user-gpu
  qemu-utils                                    # qemu-img (tests make disk images)
  util-linux procps jq strace                   # setpriv, ps, jq for CLI checks; strace (README.md syscall table)
  dpdk-dev                                      # dpdk-testpmd (vhost-user-net back-end)
  qemu-system-x86 busybox-static xz-utils       # guest tests: QEMU (TCG), initramfs userland
  linux-image-cloud-amd64                       # guest tests: the guest kernel and virtio modules
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PKGS[@]} packages already installed"
  exit 0
fi

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
