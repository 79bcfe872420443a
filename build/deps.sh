#!/usr/bin/env bash
# Installs the Debian packages the build and the KVM lab need, once.
# Idempotent and quiet when everything is present; root (or sudo) otherwise.
set -euo pipefail

# Tools the build needs, by package. Keep in sync with README "What gets installed".
packages=(
  qemu-system-x86    # the QEMU peer in benchmarks; its libraries serve the lab's QEMU 10 (build/lab-qemu.sh)
  linux-source-6.1   # the guest kernel source
  flex bison bc libelf-dev libssl-dev  # kernel build
  xz-utils cpio      # unpacking the kernel source and .debs
  curl gpgv debian-archive-keyring  # the lab kernel and QEMU from bookworm-backports, signature-checked
  build-essential
  e2fsprogs          # mkfs.ext4 for test disk images and the box image (image/), debugfs and e2fsck to check it
  busybox-static     # the guest's shell and tools, copied into the initramfs
  mmdebstrap         # the default box image (Debian bookworm) from Debian's archive: image/build.sh
  python3 python3-pytest python3-setuptools  # the Python client (clients/python): its tests, and pip install --no-build-isolation
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "deps: installing ${missing[*]} (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >&2
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
echo "deps: done" >&2
