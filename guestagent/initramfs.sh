#!/usr/bin/env bash
# Builds the guest initramfs with u-root: u-root's init as /init, which
# starts the Sailbox guest agent (cmd/sailbox-agent), plus Debian's static
# busybox as the guest's shell and tools (the agent links the applets at
# boot). Prints the path of the cached cpio.
#
# Usage: guestagent/initramfs.sh              the agent of this checkout
#        guestagent/initramfs.sh --rev REV    the agent of git revision REV
#
# --rev builds an older agent, for tests that upgrade a box from one: the
# whole repository at REV is extracted (git archive) into a temporary
# directory, so its go.mod/go.sum and u-root version are REV's, and built
# there the same way. It is cached under
# $SAILBOX_CACHE/initramfs/rev-<full commit hash>/ (REV's sources cannot
# change; the busybox and Go version in use when it was built are kept).
#
# u-root is a Go tool of this module (go.mod `tool` lines), so its version
# is pinned with everything else. The result is cached outside the checkout
# under $SAILBOX_CACHE/initramfs/<key>/ where <key> hashes the agent's
# sources, go.mod/go.sum, this script and the Go version.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() {
  echo "usage: guestagent/initramfs.sh [--rev REV]" >&2
  exit 2
}
rev=
case $# in
  0) ;;
  2) [ "$1" = --rev ] && [ -n "$2" ] || usage; rev=$2 ;;
  *) usage ;;
esac
cache=${SAILBOX_CACHE:-$HOME/.cache/sailbox}
busybox=/bin/busybox # from busybox-static (build/deps.sh)
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || [ ! -x "$busybox" ]; then
  echo "initramfs: needs Debian's busybox-static for $busybox; run build/deps.sh" >&2
  exit 1
fi

if [ -n "$rev" ]; then
  commit=$(git rev-parse --verify --quiet "$rev^{commit}") ||
    { echo "initramfs: $rev is not a commit of this repository" >&2; exit 1; }
  out=$cache/initramfs/rev-$commit
else
  key=$( {
    cat go.mod go.sum "$0"
    go version
    sha256sum "$busybox"
    find guestagent cmd/sailbox-agent -name '*.go' -not -name '*_test.go' | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -c1-16)
  out=$cache/initramfs/$key
fi
lookup() {
  if [ -f "$out/initramfs.cpio" ]; then
    echo "$out/initramfs.cpio"
    exit 0
  fi
}
lookup
. "$(dirname "$0")/../build/cachelock.sh"
cache_lock "$cache/initramfs" initramfs
lookup

if [ -n "$rev" ]; then
  src=$(mktemp -d "${TMPDIR:-/tmp}/sailbox-initramfs.XXXXXX")
  trap 'rm -rf "$src"' EXIT
  echo "initramfs: extracting $rev ($commit) to $src" >&2
  git archive "$commit" | tar -x -C "$src"
  [ -d "$src/cmd/sailbox-agent" ] ||
    { echo "initramfs: $rev has no cmd/sailbox-agent" >&2; exit 1; }
  mkdir -p "$(dirname "$out")"
  out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out") # absolute: the build runs in $src
  cd "$src"
  echo "initramfs: building $rev's agent with u-root (about a minute cold)" >&2
else
  echo "initramfs: building with u-root (about a minute cold)" >&2
fi
mkdir -p "$out.tmp"
GOOS=linux GOARCH=amd64 CGO_ENABLED=0 go tool u-root \
  -o "$out.tmp/initramfs.cpio" -base=/dev/null -defaultsh="" \
  -uinitcmd=sailbox-agent -files "$busybox:bin/busybox" \
  github.com/u-root/u-root/cmds/core/init ./cmd/sailbox-agent 2>&1 |
  grep -v -e 'recommended Go versions' -e 'Some packages may not compile' -e 'golang.org/doc/install' -e 'golang.org/dl/go1' >&2 || true
[ -s "$out.tmp/initramfs.cpio" ] || { echo "initramfs: u-root produced nothing" >&2; exit 1; }
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out/initramfs.cpio"
