#!/usr/bin/env bash
# Fetches the Debian kernel for the KVM lab guest and unpacks it into the
# cache; prints the directory holding vmlinuz and lib/modules (modules
# decompressed, as the lab's init loads plain .ko files).
#
# The lab guest is Linux under QEMU's emulator (TCG) with an emulated AMD CPU
# that offers SVM, so its kvm-amd module gives a real /dev/kvm. See
# ../shared/design/TESTING.md and internal/kvmlab.
#
# The kernel is bookworm-backports' 6.12, pinned below, not bookworm's 6.1:
#   - under 6.1's kvm-amd, QEMU 7.2's SVM emulation left the lab's own RIP
#     in our guest (stuck or triple-faulting guests), and the lab kernel
#     panicked or locked up now and then; 10 MiB streams stalled in 2 of
#     8 boots, against none in 16 under 6.12 (`make stress`);
#   - 6.10 added KVM_PRE_FAULT_MEMORY.
# The package is found in the archive's signed index and checked against
# it (build/debian.sh).
set -euo pipefail
cache=${SAILBOX_CACHE:-$HOME/.cache/sailbox}
mirror=${SAILBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm-backports
version=${SAILBOX_LAB_KERNEL:-6.12.95+deb12}
pkg=linux-image-$version-amd64

dir=$cache/lab/$pkg
lookup() {
  if [ -f "$dir/.unpacked" ]; then
    echo "$dir"
    exit 0
  fi
}
lookup
. "$(dirname "$0")/cachelock.sh"
cache_lock "$cache/lab" lab-kernel
lookup

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
name=lab-kernel
. "$(dirname "$0")/debian.sh"

debian_index
if ! debian_deb "$pkg" "" "$tmp/kernel.deb"; then
  echo "lab-kernel: $suite offers:" >&2
  xz -dc "$tmp/Packages.xz" | awk '/^Package: linux-image-[0-9.]+\+deb12-amd64$/ {print "  " $2}' | sort -uV >&2
  echo "lab-kernel: set SAILBOX_LAB_KERNEL to one of them (the version part)" >&2
  exit 1
fi

echo "lab-kernel: unpacking into $dir" >&2
rm -rf "$dir" && mkdir -p "$dir"
dpkg -x "$tmp/kernel.deb" "$dir"
find "$dir/lib/modules" -name '*.ko.xz' -print0 | xargs -0 -r -P "$(nproc)" -n 200 xz -d
touch "$dir/.unpacked"
echo "$dir"
