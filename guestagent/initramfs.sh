#!/usr/bin/env bash
# Builds the guest initramfs with u-root: u-root's init as /init, which
# starts the Sailbox guest agent (cmd/sailbox-agent), plus Debian's static
# busybox as the guest's shell and tools (the agent links the applets at
# boot). Prints the path of the cached cpio.
#
# u-root is a Go tool of this module (go.mod `tool` lines), so its version
# is pinned with everything else. The result is cached outside the checkout
# under $SAILBOX_CACHE/initramfs/<key>/ where <key> hashes the agent's
# sources, go.mod/go.sum, this script and the Go version.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${SAILBOX_CACHE:-$HOME/.cache/sailbox}
busybox=/bin/busybox # from busybox-static (build/deps.sh)
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || [ ! -x "$busybox" ]; then
  echo "initramfs: needs Debian's busybox-static for $busybox; run build/deps.sh" >&2
  exit 1
fi

key=$( {
  cat go.mod go.sum "$0"
  go version
  sha256sum "$busybox"
  find guestagent cmd/sailbox-agent -name '*.go' -not -name '*_test.go' | LC_ALL=C sort | xargs sha256sum
} | sha256sum | cut -c1-16)
out=$cache/initramfs/$key
if [ -f "$out/initramfs.cpio" ]; then
  echo "$out/initramfs.cpio"
  exit 0
fi

echo "initramfs: building with u-root (about a minute cold)" >&2
mkdir -p "$out.tmp"
GOOS=linux GOARCH=amd64 CGO_ENABLED=0 go tool u-root \
  -o "$out.tmp/initramfs.cpio" -base=/dev/null -defaultsh="" \
  -uinitcmd=sailbox-agent -files "$busybox:bin/busybox" \
  github.com/u-root/u-root/cmds/core/init ./cmd/sailbox-agent 2>&1 |
  grep -v -e 'recommended Go versions' -e 'Some packages may not compile' -e 'golang.org/doc/install' -e 'golang.org/dl/go1' >&2 || true
[ -s "$out.tmp/initramfs.cpio" ] || { echo "initramfs: u-root produced nothing" >&2; exit 1; }
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out/initramfs.cpio"
