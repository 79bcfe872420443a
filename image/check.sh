#!/usr/bin/env bash
# Checks a root-filesystem image made by image/build.sh, without mounting it
# and without KVM.
#
# Usage: image/check.sh IMAGE
#
# Read with debugfs: e2fsck -fn finds it clean; /bin/sh, /usr/bin/python3
# and /usr/bin/curl resolve to executables; the CA bundle is there;
# /etc/os-release names bookworm; ownership, a setuid bit and a hard link
# survived; /dev is empty and /proc, /sys, /run, /tmp are directories. As
# root it also copies the tree out (debugfs rdump) and runs python3, curl
# and sh in a chroot of the copy. Prints one line per check on stderr and
# exits non-zero at the first failure.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -f "$1" ]; then
  echo "usage: image/check.sh IMAGE" >&2
  exit 2
fi
img=$1

fail() { echo "image check: FAIL: $*" >&2; exit 1; }
ok() { echo "image check: ok: $*" >&2; }

# debugfs prints its banner on stderr and reports errors there too, with
# exit status 0; a request that names a missing file prints "File not found".
dfs() { debugfs -R "$1" "$img" 2>/dev/null; }
field() { # path, stat field -> its value
  dfs "stat \"$1\"" | awk -v f="$2:" '{ for (i = 1; i < NF; i++) if ($i == f) { print $(i + 1); exit } }'
}

# resolve PATH: follows symbolic links in the last component (debugfs
# follows them in the others) and prints the path of what they lead to.
resolve() {
  local p=$1 n target
  for n in $(seq 1 20); do
    [ -n "$(field "$p" Type)" ] || return 1
    if [ "$(field "$p" Type)" != symlink ]; then
      echo "$p"
      return 0
    fi
    target=$(dfs "stat \"$p\"" | sed -n 's/^Fast link dest: "\(.*\)"$/\1/p')
    [ -n "$target" ] || target=$(dfs "cat \"$p\"")
    case "$target" in
      /*) p=$target ;;
      *) p=$(dirname "$p")/$target ;;
    esac
  done
  return 1
}

if ! out=$(e2fsck -fn "$img" 2>&1); then
  echo "$out" >&2
  fail "e2fsck -fn reports problems"
fi
ok "e2fsck -fn clean"

for exe in /bin/sh /usr/bin/python3 /usr/bin/curl; do
  real=$(resolve "$exe") || fail "$exe missing or a dangling link"
  [ "$(field "$real" Type)" = regular ] || fail "$exe resolves to $real, not a regular file"
  mode=$(field "$real" Mode)
  [ $(( 8#$mode & 8#111 )) -ne 0 ] || fail "$exe ($real) is not executable (mode $mode)"
  ok "$exe -> $real, mode $mode"
done

bundle=/etc/ssl/certs/ca-certificates.crt
real=$(resolve "$bundle") || fail "$bundle missing"
certs=$(dfs "cat \"$real\"" | grep -c 'BEGIN CERTIFICATE' || true)
[ "$certs" -gt 50 ] || fail "$bundle holds $certs certificates"
ok "$bundle: $certs certificates"

real=$(resolve /etc/os-release) || fail "/etc/os-release missing"
dfs "cat \"$real\"" | grep -qx 'VERSION_CODENAME=bookworm' || fail "/etc/os-release does not say bookworm"
ok "/etc/os-release: $(dfs "cat \"$real\"" | sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p')"

# What mke2fs -d keeps only when the tree was made and copied as root.
[ "$(field /usr/bin/su Mode)" = 04755 ] || fail "/usr/bin/su lost its setuid bit (mode $(field /usr/bin/su Mode))"
[ "$(field /etc/shadow Group)" = 42 ] || fail "/etc/shadow is not group shadow (42)"
links=$(field /usr/bin/perl Links)
[ "${links:-0}" -ge 2 ] || fail "/usr/bin/perl has $links links; hard links were not kept"
ok "setuid /usr/bin/su, /etc/shadow group 42, /usr/bin/perl with $links links"

entries=$(dfs "ls -p /dev" | awk -F/ 'NF > 5 && $6 != "." && $6 != ".." { print $6 }')
[ -z "$entries" ] || fail "/dev is not empty: $entries"
for d in /proc /sys /run /tmp; do
  [ "$(field "$d" Type)" = directory ] || fail "$d is not a directory"
done
[ "$(field /tmp Mode)" = 01777 ] || fail "/tmp mode is $(field /tmp Mode)"
ok "/dev empty; /proc /sys /run /tmp directories"

if [ "$(id -u)" -ne 0 ]; then
  ok "not root: skipping the chroot run (debugfs rdump keeps owners only as root)"
  exit 0
fi
tree=$(mktemp -d /tmp/sailbox-image-check.XXXXXX)
trap 'rm -rf --one-file-system "$tree"' EXIT
errs=$(debugfs -R "rdump / $tree" "$img" 2>&1 | grep -v '^debugfs [0-9]' || true)
[ -z "$errs" ] || fail "debugfs rdump: $errs"
got=$(chroot "$tree" /usr/bin/python3 -c 'import sqlite3, json, ssl, zlib, hashlib; ssl.create_default_context(); print("ok")') ||
  fail "python3 in a chroot of the image"
[ "$got" = ok ] || fail "python3 printed $got"
ok "chroot: python3 imports sqlite3, json, ssl, zlib, hashlib and builds a TLS context"
chroot "$tree" /usr/bin/curl --version >/dev/null || fail "curl --version in a chroot of the image"
[ "$(chroot "$tree" /bin/sh -c 'echo "$((6 * 7))"')" = 42 ] || fail "sh in a chroot of the image"
ok "chroot: curl --version, sh"
