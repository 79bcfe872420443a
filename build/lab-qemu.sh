#!/usr/bin/env bash
# Fetches QEMU for the KVM lab from bookworm-backports and unpacks it into
# the cache, without installing it; prints the directory (usr/bin holds
# qemu-system-x86_64, usr/share/qemu and usr/share/seabios its firmware).
#
# Why not bookworm's QEMU 7.2 (which build/deps.sh still installs: its
# shared libraries are the ones this QEMU needs, and it is the peer in
# benchmarks): under 7.2's emulated SVM the lab kernel died of "corrupted
# stack end detected inside scheduler" in sailbox-vmm threads about once
# in ten minutes of kvm-tier tests, three times in one CI run, which no
# number of reruns makes a reliable `make test`. See README "The KVM lab".
#
# The package is found in the archive's signed index and checked against
# it (build/debian.sh). The version is pinned; if the archive no longer
# offers it, the one it offers is taken, and said.
set -euo pipefail
cache=${SAILBOX_CACHE:-$HOME/.cache/sailbox}
mirror=${SAILBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm-backports
version=${SAILBOX_LAB_QEMU:-1:10.0.2+ds-2+deb13u1~bpo12+1}

stamp() { echo "$cache/lab/qemu-${1//[:~]/_}"; }
dir=$(stamp "$version")
lookup() {
  if [ -f "$dir/.unpacked" ]; then
    echo "$dir"
    exit 0
  fi
}
lookup
. "$(dirname "$0")/cachelock.sh"
cache_lock "$cache/lab" lab-qemu
lookup

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
name=lab-qemu
. "$(dirname "$0")/debian.sh"

debian_index
if ! debian_versions qemu-system-x86 | grep -qxF "$version"; then
  offered=$(debian_versions qemu-system-x86 | sort -V | tail -1)
  [ -n "$offered" ] || { echo "lab-qemu: $suite offers no qemu-system-x86" >&2; exit 1; }
  echo "lab-qemu: WARNING: $suite no longer offers QEMU $version; taking $offered (set SAILBOX_LAB_QEMU to choose)" >&2
  version=$offered
  dir=$(stamp "$version")
  lookup
fi
# qemu-system-data must match QEMU's version; SeaBIOS is the newest offered.
debian_deb qemu-system-x86 "$version" "$tmp/qemu.deb"
debian_deb qemu-system-data "$version" "$tmp/data.deb"
debian_deb seabios "" "$tmp/seabios.deb"

echo "lab-qemu: unpacking into $dir" >&2
rm -rf "$dir" && mkdir -p "$dir"
for d in qemu data seabios; do dpkg -x "$tmp/$d.deb" "$dir"; done
if missing=$(ldd "$dir/usr/bin/qemu-system-x86_64" | grep 'not found'); then
  echo "lab-qemu: QEMU $version needs libraries this machine lacks (build/deps.sh installs bookworm's qemu-system-x86, which brings them):" >&2
  echo "$missing" >&2
  exit 1
fi
touch "$dir/.unpacked"
echo "$dir"
