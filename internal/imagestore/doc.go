// Package imagestore turns OCI and Docker images into the ext4 base
// disks boxes boot on: one read-only base per image, shared by every box
// made from it, with the parts of the image's config a box runs with.
//
// # Use
//
//	s, err := imagestore.Open(filepath.Join(state, "images"), imagestore.Options{})
//	img, err := s.Import(ctx, "docker.io/library/debian:12")   // or a layout dir, a docker-save tarball
//	// img.Path: <dir>/sha256-<hex>.ext4, mode 0444; img.Config: Env, WorkingDir, User, Entrypoint, Cmd
//	img, err = s.Get(img.Digest)
//	all, err := s.List()
//	err = s.Remove(img.Digest)   // the caller checks no box uses it
//
// A REF is an OCI image layout directory (DIR, DIR:TAG, DIR@sha256:…), a
// `docker save` tarball (FILE, FILE:NAME:TAG), or a registry reference;
// see findImage. Only linux/amd64 images are taken, picked from an
// index where there is one. Plain HTTP reaches loopback registries only.
//
// # The key: the config digest
//
// A base is keyed by the image's config digest (its "image ID"), not its
// manifest digest. The config lists the diff_ids, the digests of the
// uncompressed layers, so it names exactly the tree the base holds; the
// manifest names compressed blobs, and the same image has other
// manifest digests in a registry, in an OCI layout and in a docker-save
// tarball (which keeps no manifest at all, so one is made up on
// reading). Keyed by config, the same image imported three ways is one
// base, converted once. For the key to be sound, every layer's
// uncompressed content is checked against its diff_id while it is read
// (layers.go); a source cannot store other content under an image's
// key. The config itself must be the one its manifest names, a layout's
// manifests and indexes the ones their index names, and a docker-save
// tarball's config the one its manifest.json names (ref.go's
// checkDigest): go-containerregistry reads those files by name without
// comparing digests, so a damaged config that still parsed would
// otherwise give boxes another Env or User under a digest of its own.
//
// # Conversion
//
//  1. go-containerregistry's mutate.Extract flattens the layers: it
//     applies whiteouts and opaque directories and gives each path once,
//     upper layers first. It is not trusted to report every failure: a
//     layer that fails mid-read looks like the end of the image (its tar
//     writer writes the end-of-archive blocks before the error reaches
//     the pipe), so the stream is drained after its end for the error;
//     and it drops links whose target climbs out of the root, and
//     entries beneath a symlink of their own layer, silently, so a
//     scanner beside it refuses those images by name (layers.go).
//  2. The flattened stream is written into a staging directory inside
//     the store (under .tmp, mode 0700: the tree holds setuid files)
//     through an os.Root, so that no path leaves it. Each entry's parent
//     is first walked one component at a time (resolve.go): an absolute
//     symlink or a `..` above the root on the way is an escape, and the
//     import is refused with ErrUnsafeEntry naming the entry and the
//     link, rather than the entry being skipped or redirected. Layers
//     that docker or buildkit build never write through a symlink, so
//     only a crafted layer is refused. Relative links that stay inside
//     are followed, as the guest would.
//  3. /bin/sh must resolve, as the guest will resolve it (absolute links
//     from the image's root), to an executable file: the guest agent
//     runs commands with it.
//  4. mke2fs -t ext4 -d copies the tree into a new sparse file sized from
//     the tree (mkfs.go states the formula), with root_owner=0:0;
//     e2fsck -fn checks it; it is made 0444, fsynced, and renamed into
//     place after its JSON record. The work directory is removed whatever
//     happens, so a failed or cancelled import leaves nothing; Open
//     removes what a crash left.
//
// # What survives the conversion
//
//   - Owners (uid/gid), modes with setuid, setgid and sticky bits, and
//     modification times of files, directories and symlinks: the unpack
//     runs as root and sets them (chown before chmod, which chown would
//     clear), and mke2fs -d copies them. The image's root directory is
//     made 0755 root:root by mke2fs whatever the image says.
//   - Symlinks, with their targets verbatim: an absolute target is fine
//     as link content, it resolves inside the guest.
//   - Hard links, as links to one inode (mke2fs -d keeps them), also to
//     a file of a lower layer (made after the stream). A hard link whose
//     target the flattened image lacks (a later layer deleted it) is
//     refused: its content is gone with the target.
//   - Extended attributes: security.capability (file capabilities, which
//     programs such as ping rely on) and user.*; trusted.* (the host's,
//     overlayfs keeps whiteouts there), security.selinux and ACLs
//     (system.*) are dropped, as they follow the host's policy and the
//     guest kernel has neither SELinux nor ext4 ACLs.
//   - Device nodes and fifos are skipped: the guest mounts devtmpfs on
//     /dev, and a device node elsewhere would be another name for the
//     guest's disks or memory.
//
// # Bounds
//
// Options.MaxImageBytes bounds each layer's uncompressed stream and the
// flattened tree; the layers' stored sizes are checked against it, and
// the store's free space against them, before anything is read. While
// unpacking, the disk must keep room for a copy of what was written (the
// base) plus Options.ReserveBytes, checked every 64 MiB, and the base's
// host size is checked before mke2fs runs: an import stops with
// ErrNoSpace rather than fill the disk, and a write that still finds it
// full gives ErrNoSpace too.
//
// # Concurrency
//
// Imports and removals of one digest hold its lock (Store.lock); a second
// import of a digest in flight waits and then finds the base. The
// directory belongs to one process, the daemon.
package imagestore
