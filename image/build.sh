#!/usr/bin/env bash
# Builds Sailbox's default root-filesystem image: Debian bookworm, minimal,
# with python3, ca-certificates and curl, from Debian's archive with
# mmdebstrap, as an ext4 base image.
#
# Usage: image/build.sh             prints the path of the cached rootfs.ext4
#
# The result is cached outside the checkout under
#   $SAILBOX_CACHE/image/<key>/rootfs.ext4   (SAILBOX_CACHE: ~/.cache/sailbox)
# beside rootfs.json (its image record, in internal/imagestore's format:
# the environment, working directory and user a box's exec gets, which
# also tells sailboxd the disk is a root file system), packages.txt (every
# installed package and version) and build.log.
# <key> hashes every input: this script (which holds the package list), the
# suite, the apt sources, and the versions of mmdebstrap, apt, dpkg and
# e2fsprogs with /etc/mke2fs.conf. A second run with the same inputs is a
# lookup. The archive's content is not an input: the first build after a
# point release may get newer packages, and an entry, once built, stays.
#
# Reproducibility, as far as mmdebstrap allows: SOURCE_DATE_EPOCH is set for
# mmdebstrap; every file the build itself wrote (rather than unpacked from a
# package) gets that time as its mtime, and every inode gets it as atime and
# ctime; the filesystem UUID and directory hash seed are derived from <key>,
# and mke2fs runs with E2FSPROGS_FAKE_TIME. The same inputs against the same
# archive content give the same bytes.
#
# Runs as root: mmdebstrap's root mode (chroot, real ownership), and
# mke2fs -d, which copies owners from the tree as it finds them. The
# alternatives were weighed and rejected: --mode=unshare needs subordinate
# id ranges and leaves a tree owned by them, which mke2fs -d (e2fsprogs
# 1.47.0 reads no tarball) would copy as is; --mode=fakeroot gives a tree
# whose ownership exists only inside that fakeroot session.
set -euo pipefail

cache=${SAILBOX_CACHE:-$HOME/.cache/sailbox}

suite=bookworm
# mmdebstrap's "apt" variant: the Essential:yes set plus apt, the smallest
# set in which packages can still be installed. "minbase" would add
# Priority:required (mount, e2fsprogs, logsave, tzdata: 8 MB) that nothing
# in a box needs; the agent mounts what it needs itself.
variant=apt
# Everything the image holds beyond that set; nothing else is needed.
packages=(
  python3          # the demo's and the tests' language
  ca-certificates  # the TLS trust store, for curl and python's ssl
  curl
)
# Debian's slim container images drop the same: documentation (its
# copyright files stay), manual and info pages, translations. The rule
# stays in the image (/etc/dpkg/dpkg.cfg.d), so later installs follow it.
dpkg_excludes=(
  path-exclude=/usr/share/doc/*
  path-include=/usr/share/doc/*/copyright
  path-exclude=/usr/share/man/*
  path-exclude=/usr/share/info/*
  path-exclude=/usr/share/groff/*
  path-exclude=/usr/share/lintian/*
  path-exclude=/usr/share/linda/*
  path-exclude=/usr/share/locale/*
)
hostname=sailbox
# 2026-01-01 00:00:00 UTC, the kernel build's timestamp.
epoch=1767225600

if [ "$(id -u)" -ne 0 ]; then
  echo "image: must run as root: mmdebstrap's root mode installs packages in a chroot with real ownership, and mke2fs -d copies that ownership, setuid bits and all, into the image (try: sudo $0)" >&2
  exit 1
fi
for tool in mmdebstrap dpkg-architecture mke2fs debugfs e2fsck flock findmnt; do
  command -v "$tool" >/dev/null || { echo "image: $tool missing; run build/deps.sh" >&2; exit 1; }
done

# The apt sources are the host's: the first bookworm, bookworm-updates and
# bookworm-security repositories apt has configured (main). bookworm alone
# falls back to deb.debian.org; updates and security are taken only if the
# host has them, so that the image's curl and openssl have Debian's fixes.
targets=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' 2>/dev/null || true)
repo_of() { # suite -> the host apt's repository URI for it, or nothing
  echo "$targets" | awk -v s="$1" '$2 == s && $3 == "main" { print $1; exit }'
}
sources=()
mirror=$(repo_of "$suite")
sources+=("deb ${mirror:-http://deb.debian.org/debian/} $suite main")
for s in "$suite-updates" "$suite-security"; do
  r=$(repo_of "$s")
  [ -z "$r" ] || sources+=("deb $r $s main")
done

key=$( {
  echo "suite $suite variant $variant hostname $hostname epoch $epoch"
  printf 'package %s\n' "${packages[@]}"
  printf 'dpkgopt %s\n' "${dpkg_excludes[@]}"
  printf 'source %s\n' "${sources[@]}"
  dpkg-query -W -f='${Package} ${Version}\n' mmdebstrap apt dpkg e2fsprogs
  cat /etc/mke2fs.conf "$0"
} | sha256sum | cut -c1-16)
out=$cache/image/$key
if [ -f "$out/rootfs.ext4" ]; then
  echo "$out/rootfs.ext4"
  exit 0
fi

# One build at a time: whoever holds the lock owns every temporary
# directory, so any found are from an interrupted build and go.
mkdir -p "$cache/image"
exec 9>"$cache/image/.lock"
if ! flock -n 9; then
  echo "image: waiting for another image build to finish" >&2
  flock 9
fi
if [ -f "$out/rootfs.ext4" ]; then
  echo "$out/rootfs.ext4"
  exit 0
fi

# Removes a temporary build directory. mmdebstrap unmounts what it mounted
# in the tree even when interrupted; should a kill have left something
# mounted, it is unmounted here, and rm never crosses into another
# filesystem either way.
remove_tmp() {
  local d=$1 m
  [ -e "$d" ] || return 0
  findmnt -rn -o TARGET | awk -v d="$d/" 'index($0, d) == 1' | sort -r |
    while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$d"
}
for stale in "$cache"/image/*.tmp; do
  [ -e "$stale" ] || continue
  echo "image: removing $stale, left by an interrupted build" >&2
  remove_tmp "$stale"
done
# An entry without its image was not made by this script; it goes too.
remove_tmp "$out"

tmp=$out.tmp
tree=$tmp/tree
mkdir -p "$tmp"
trap 'remove_tmp "$tmp"' EXIT
trap 'echo "image: interrupted; nothing cached" >&2; exit 130' INT TERM
start=$(date +%s)
log=$tmp/build.log

# Files newer than this were written by the build, not unpacked from a .deb.
touch "$tmp/started"

args=(--mode=root --variant="$variant" --format=directory
  --include="$(IFS=,; echo "${packages[*]}")"
  # merged /usr the way debootstrap sets it up (directory symlinks and
  # usr-is-merged); without it apt picks the usrmerge package, which
  # converts the tree at install time and pulls in all of perl (47 MB).
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # dpkg without fsync (the tree is copied into the image afterwards
  # anyway); it is removed again at the end.
  --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata
  --debug)
for x in "${dpkg_excludes[@]}"; do args+=(--dpkgopt="$x"); done
echo "image: mmdebstrap $suite ($variant + ${packages[*]}) from ${sources[0]#deb }; log: $out/build.log" >&2

# Progress: mmdebstrap's own steps, and a line per 25 packages fetched,
# extracted, unpacked or set up; the full output (--debug, for its
# timing: --verbose holds some steps back) goes to the log.
set +e
SOURCE_DATE_EPOCH=$epoch mmdebstrap "${args[@]}" "$suite" "$tree" "${sources[@]}" 2>&1 |
  tee "$log" | awk -v start="$start" '
    function say(msg) { printf "image: %s, %ds\n", msg, systime() - start > "/dev/stderr"; fflush("/dev/stderr") }
    /^[IWE]: [0-9]+ [0-9]+ / { msg = $0; sub(/^[IWE]: [0-9]+ [0-9]+ /, "", msg)
      say((substr($0, 1, 1) == "I" ? "" : substr($0, 1, 3)) msg); next }
    # apt downloading as root where its sandbox user _apt cannot reach (the
    # temporary directory of the eatmydata hook, a cache under /root): harmless
    /^W: Download is performed unsandboxed/ { next }
    /^[WE]: / { say($0); next }
    /^Get:[0-9]+ / && !/InRelease|Packages|Translation/ { if (++got % 25 == 0) say(got " packages downloaded") }
    /running dpkg-deb --fsys-tarfile/ { if (++extracted % 25 == 0) say(extracted " packages extracted") }
    /^Unpacking / { if (++unpacked % 25 == 0) say(unpacked " packages unpacked") }
    /^Setting up / { if (++set % 25 == 0) say(set " packages set up") }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "image: mmdebstrap failed (exit $status); last lines of its output:" >&2
  tail -30 "$log" >&2
  exit 1
fi
if findmnt -rn -o TARGET | awk -v d="$tree/" 'index($0, d) == 1' | grep -q .; then
  echo "image: something is still mounted under $tree after mmdebstrap" >&2
  exit 1
fi

echo "image: configuring the tree" >&2
# mmdebstrap copies the host's resolv.conf and hostname in; neither belongs
# in a box (its network is set up when it boots).
rm -f "$tree/etc/resolv.conf"
echo "$hostname" > "$tree/etc/hostname"
cat > "$tree/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$hostname
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
# The guest mounts devtmpfs, proc, sysfs and tmpfs on these.
rm -rf --one-file-system "${tree:?}"/dev/* "${tree:?}"/run/* "${tree:?}"/tmp/*
for d in dev proc sys run tmp; do mkdir -p "$tree/$d"; done
chmod 0755 "$tree/dev" "$tree/proc" "$tree/sys" "$tree/run"
chmod 1777 "$tree/tmp"
# mmdebstrap removes the package lists and .debs; the caches apt rebuilds
# on its next run go too.
rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin "$tree"/var/cache/apt/archives/*.deb
# apt's download directories belong to its sandbox user, as on any Debian
# system; they are root's after a build whose tree _apt could not reach
# (a cache under /root, mode 0700), where apt downloaded as root instead.
for d in var/lib/apt/lists/partial var/cache/apt/archives/partial; do
  mkdir -p "$tree/$d"
  chroot "$tree" chown _apt:root "/$d"
  chmod 0700 "$tree/$d"
done
# The eatmydata hook's traces: its library, gone again, is still in the
# dynamic linker's cache, and its dpkg diversion left a backup file.
chroot "$tree" /sbin/ldconfig
rm -f "$tree/var/cache/ldconfig/aux-cache" "$tree/var/lib/dpkg/diversions-old"
chroot "$tree" dpkg-query -W -f='${Package} ${Version}\n' > "$tmp/packages.txt"
find "$tree" -newer "$tmp/started" -exec touch --no-dereference --date=@"$epoch" {} +

# Size: the tree, a quarter more for ext4's metadata and journal, and
# 128 MiB free for the box; rounded up to 16 MiB. No blocks are reserved
# for root (the headroom is all the box's). One inode per 16 KiB, set
# explicitly: mke2fs.conf's "small" type would otherwise give a filesystem
# under 512 MiB 1 KiB blocks.
tree_kib=$(du -sk "$tree" | cut -f1)
tree_files=$(find "$tree" | wc -l)
size_mib=$(( (tree_kib * 5 / 4 / 1024 + 128 + 15) / 16 * 16 ))
h=$(echo "$key" | sha256sum)
uuid=${h:0:8}-${h:8:4}-4${h:13:3}-8${h:17:3}-${h:20:12}
seed=${h:32:8}-${h:40:4}-4${h:45:3}-8${h:49:3}-${h:52:12}
echo "image: mke2fs -d: tree $(( tree_kib / 1024 )) MiB in $tree_files files, filesystem $size_mib MiB" >&2
img=$tmp/rootfs.ext4
truncate -s "${size_mib}M" "$img"
export E2FSPROGS_FAKE_TIME=$epoch
mke2fs -q -F -t ext4 -d "$tree" -b 4096 -I 256 -i 16384 -m 0 -L sailbox-root \
  -U "$uuid" -E hash_seed="$seed",root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard \
  "$img" >>"$log" 2>&1 || { echo "image: mke2fs failed; last lines of $log:" >&2; tail -10 "$log" >&2; exit 1; }

# mke2fs copies each file's atime and ctime, which are the build's; they are
# set to the epoch in one debugfs session. Its path syntax would not carry
# a double quote or a newline: such a path (Debian ships none) keeps its times.
echo "image: fixing inode times" >&2
cmds=$tmp/times.debugfs
(cd "$tree" && find . -print0) | while IFS= read -r -d '' p; do
  p=${p#.}; p=${p:-/}
  case "$p" in *'"'*|*$'\n'*) echo "image: warning: $p keeps its build-time atime and ctime" >&2; continue ;; esac
  printf 'sif "%s" atime @%s\nsif "%s" ctime @%s\n' "$p" "$epoch" "$p" "$epoch"
done > "$cmds"
errs=$(debugfs -w -f "$cmds" "$img" 2>&1 >/dev/null | grep -v '^debugfs [0-9]' || true)
if [ -n "$errs" ]; then
  echo "image: debugfs failed to set inode times:" >&2
  echo "$errs" | head -10 >&2
  exit 1
fi
if ! e2fsck -fn "$img" >>"$log" 2>&1; then
  echo "image: e2fsck finds the new image inconsistent; see $log" >&2
  exit 1
fi

# The image record (internal/imagestore's record format); the digest is
# the image file's.
digest=$(sha256sum "$img" | cut -d' ' -f1)
cat > "$tmp/rootfs.json" <<EOF
{
  "digest": "sha256:$digest",
  "ref": "sailbox-debian-$suite-$key",
  "created": "$(date -u -d @"$epoch" +%Y-%m-%dT%H:%M:%SZ)",
  "config": {
    "env": [
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "HOME=/root",
      "LANG=C.UTF-8"
    ],
    "working_dir": "/root",
    "cmd": ["/bin/bash"]
  }
}
EOF

rm -rf --one-file-system "$tree" "$cmds" "$tmp/started"
mv -T "$tmp" "$out"
trap - EXIT
echo "image: built in $(( $(date +%s) - start ))s: $size_mib MiB filesystem, $(( $(du -k "$out/rootfs.ext4" | cut -f1) / 1024 )) MiB allocated, tree $(( tree_kib / 1024 )) MiB: $out/rootfs.ext4" >&2
echo "$out/rootfs.ext4"
