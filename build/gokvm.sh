#!/usr/bin/env bash
# Builds gokvm (github.com/bobuhiro11/gokvm), a peer of the benchmarks
# (sailbox-bench -gokvm), from the Go module proxy with `go install`, and
# prints the path of the binary.
#
# It is a tool, not a dependency: it is not in go.mod, so its own
# dependencies (kong, x/arch, x/sys) never enter Sailbox's build. The
# version is pinned (SAILBOX_GOKVM overrides it) and checked by go.sum's
# mechanism: `go install pkg@version` verifies the module against the
# checksum database. The result is cached outside the checkout under
#   $SAILBOX_CACHE/gokvm/<version>-<go version>/gokvm
# so that a second run is a lookup, and the KVM lab (no network, the host's
# files read-only) runs the binary built here.
set -euo pipefail
cache=${SAILBOX_CACHE:-$HOME/.cache/sailbox}
# The newest version the proxy has (its default branch on 2023-10-03;
# gokvm tags no releases after v0.0.7).
version=${SAILBOX_GOKVM:-v0.0.8-0.20231003020000-f53faca69d28}

gover=$(go env GOVERSION)
out=$cache/gokvm/$version-$gover
lookup() {
  if [ -x "$out/gokvm" ]; then
    echo "$out/gokvm"
    exit 0
  fi
}
lookup
. "$(dirname "$0")/cachelock.sh"
cache_lock "$cache/gokvm" gokvm
lookup
echo "gokvm: building github.com/bobuhiro11/gokvm@$version with $gover (go install, from the module proxy)" >&2
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
# Outside any module, so that this checkout's go.mod plays no part.
(cd "$out.tmp" && GOBIN="$out.tmp" CGO_ENABLED=0 go install "github.com/bobuhiro11/gokvm@$version")
[ -x "$out.tmp/gokvm" ] || { echo "gokvm: go install produced no binary" >&2; exit 1; }
rm -rf "$out" && mv "$out.tmp" "$out"
echo "gokvm: built $out/gokvm" >&2
echo "$out/gokvm"
