# Sourced by the scripts that take a package from Debian's archive without
# installing it (lab-kernel.sh, lab-qemu.sh): the package is found in the
# suite's signed index (InRelease, checked with gpgv against Debian's
# keyring) and the .deb checked against the index's SHA256.
#
# The caller sets: name (its prefix in messages), mirror, suite, and tmp
# (a scratch directory it removes).

fetch() { curl -fsSL --retry 3 -o "$2" "$1" || { echo "$name: cannot download $1" >&2; exit 1; }; }

# debian_index: $tmp/Packages.xz, the suite's main/amd64 package index,
# checked against the signed Release.
debian_index() {
  echo "$name: reading $suite's signed index" >&2
  fetch "$mirror/dists/$suite/InRelease" "$tmp/InRelease"
  gpgv --quiet --keyring /usr/share/keyrings/debian-archive-keyring.gpg --output "$tmp/Release" "$tmp/InRelease" 2>"$tmp/gpgv.log" ||
    { cat "$tmp/gpgv.log" >&2; echo "$name: $suite/InRelease: bad signature" >&2; exit 1; }
  local index=main/binary-amd64/Packages.xz sum
  sum=$(awk -v f="$index" '/^SHA256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 == f {print $1}' "$tmp/Release")
  [ -n "$sum" ] || { echo "$name: $suite/Release lists no $index" >&2; exit 1; }
  fetch "$mirror/dists/$suite/$index" "$tmp/Packages.xz"
  echo "$sum  $tmp/Packages.xz" | sha256sum --quiet -c - || { echo "$name: $index: checksum mismatch" >&2; exit 1; }
}

# debian_versions PKG: the versions of PKG the index offers, one a line.
debian_versions() {
  xz -dc "$tmp/Packages.xz" | awk -v p="$1" '/^Package:/ {hit = ($2 == p)} hit && /^Version:/ {print $2}'
}

# debian_deb PKG VERSION OUT: downloads PKG at VERSION (as the index
# lists it) to OUT and checks it; "" as VERSION takes the one offered.
debian_deb() {
  local file debsum
  read -r file debsum < <(xz -dc "$tmp/Packages.xz" | awk -v p="$1" -v v="$2" '
    /^Package:/ {hit = ($2 == p); f = ""; s = ""; ver = ""}
    hit && /^Version:/ {ver = $2}
    hit && /^Filename:/ {f = $2}
    hit && /^SHA256:/ {s = $2}
    hit && f != "" && s != "" && (v == "" || ver == v) {print f, s; exit}') || true
  [ -n "${file:-}" ] || { echo "$name: $1 ${2:-} is not in $suite" >&2; return 1; }
  echo "$name: downloading $(basename "$file")" >&2
  curl -fL --retry 3 --progress-bar -o "$3" "$mirror/$file" ||
    { echo "$name: cannot download $mirror/$file" >&2; exit 1; }
  echo "$debsum  $3" | sha256sum --quiet -c - || { echo "$name: $file: checksum mismatch" >&2; exit 1; }
}
