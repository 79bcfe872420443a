#!/usr/bin/env bash
# Fetches Debian's stock kernel for the KVM lab guest and unpacks it into the
# cache; prints the directory holding vmlinuz and lib/modules.
#
# The lab guest is Linux under QEMU's emulator (TCG) with an emulated AMD CPU
# that offers SVM, so its kvm-amd module gives a real /dev/kvm. See
# ../shared/design/TESTING.md and internal/kvmlab.
set -euo pipefail
cache=${SAILBOX_CACHE:-$HOME/.cache/sailbox}

# linux-image-amd64 is a metapackage; its first dependency is the real image.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >&2
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "lab-kernel: cannot resolve linux-image-amd64 to a kernel package" >&2; exit 1; }

dir=$cache/lab/$pkg
if [ ! -f "$dir/.unpacked" ]; then
  echo "lab-kernel: downloading $pkg (apt, ~70 MB)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q "$pkg" >&2)
  rm -rf "$dir" && mkdir -p "$dir"
  dpkg -x "$tmp"/*.deb "$dir"
  touch "$dir/.unpacked"
fi
echo "$dir"
