#!/usr/bin/env bash
# Builds the Sailbox guest kernel (bzImage) from Debian's linux-source-6.1
# package and this folder's config fragment.
#
# Usage: kernel/build.sh            prints the path of the cached bzImage
#
# The result is cached outside the checkout under
#   $SAILBOX_CACHE/kernel/<key>/bzImage     (SAILBOX_CACHE: ~/.cache/sailbox)
# where <key> hashes every input: the source package version, the fragment,
# this script and the toolchain. A second run with the same inputs is a
# lookup. The build itself is reproducible: timestamp, user and host are
# fixed, so the same inputs give the same bytes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${SAILBOX_CACHE:-$HOME/.cache/sailbox}
src_tar=/usr/src/linux-source-6.1.tar.xz
fragment=$here/sailbox.config

if [ ! -f "$src_tar" ]; then
  echo "kernel: $src_tar missing; run build/deps.sh (apt-get install linux-source-6.1)" >&2
  exit 1
fi

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( {
  echo "linux-source-6.1 $src_version"
  cat "$fragment" "$0"
  gcc --version | head -1
} | sha256sum | cut -c1-16)
out=$cache/kernel/$key
lookup() {
  if [ -f "$out/bzImage" ]; then
    echo "$out/bzImage"
    exit 0
  fi
}
lookup
. "$here/../build/cachelock.sh"
cache_lock "$cache/kernel" kernel
lookup

# The unpacked tree is shared by every key with the same source version; the
# object tree is reused between keys so that a fragment change rebuilds
# incrementally.
src=$cache/kernel/src-$src_version
obj=$cache/kernel/obj
if [ ! -f "$src/.unpacked" ]; then
  echo "kernel: unpacking linux-source $src_version (about a minute)" >&2
  rm -rf "$src" && mkdir -p "$src"
  tar -xf "$src_tar" -C "$src" --strip-components=1
  touch "$src/.unpacked"
fi
mkdir -p "$obj"

export KBUILD_BUILD_TIMESTAMP="2026-01-01 00:00:00 UTC"
export KBUILD_BUILD_USER=sailbox KBUILD_BUILD_HOST=sailbox KBUILD_BUILD_VERSION=1
jobs=$(nproc)

echo "kernel: configuring (tinyconfig + kernel/sailbox.config)" >&2
make -s -C "$src" O="$obj" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment" >/dev/null
make -s -C "$src" O="$obj" olddefconfig >/dev/null

# Every option the fragment asks for must survive olddefconfig; a silently
# dropped option (an unmet dependency) is a build error, not a surprise at boot.
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$obj/.config" || { echo "kernel: fragment asks for $line, config has: $(grep "^${line%%=*}=" "$obj/.config" || echo "not set")" >&2; bad=1; } ;;
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
      grep -q "^$opt=" "$obj/.config" && { echo "kernel: fragment disables $opt but config has $(grep "^$opt=" "$obj/.config")" >&2; bad=1; } ;;
  esac
done < "$fragment"
[ "$bad" -eq 0 ] || exit 1

# Progress: one line per 200 compiled objects; the full log stays beside the output.
log=$cache/kernel/build-$key.log
echo "kernel: building bzImage with $jobs jobs (~15 min cold on 2 cores; log: $log)" >&2
start=$(date +%s)
set +e
make -C "$src" O="$obj" -j"$jobs" bzImage 2>&1 | tee "$log" | awk -v start="$start" '
  / CC | AS | LD | AR / { n++; if (n % 200 == 0) { printf "kernel: %d objects built, %ds\n", n, systime() - start > "/dev/stderr"; fflush("/dev/stderr") } }
  /error:|Error [0-9]/ { print > "/dev/stderr" }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "kernel: build failed (exit $status); last lines of $log:" >&2
  tail -30 "$log" >&2
  exit 1
fi

mkdir -p "$out.tmp"
cp "$obj/arch/x86/boot/bzImage" "$out.tmp/bzImage"
cp "$obj/.config" "$out.tmp/config"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "kernel: built in $(( $(date +%s) - start ))s: $out/bzImage" >&2
echo "$out/bzImage"
