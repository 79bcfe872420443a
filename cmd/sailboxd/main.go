// Command sailboxd is the Sailbox daemon: it owns every box on the host,
// runs one sailbox-vmm per running box, keeps their records and
// checkpoint catalog in its state directory, and serves the API
// (api/openapi.yaml) as HTTP+JSON on a Unix socket.
//
//	sailboxd -kernel bzImage -initrd initramfs.cpio -image base.raw
//
// State directory (-state-dir): /var/lib/sailbox when run as root;
// otherwise $XDG_STATE_HOME/sailbox, or ~/.local/state/sailbox. It holds
// catalog.db (box records and the checkpoint catalog), store/ (the
// checkpoint store: manifests, layers, disk tops) and run/<box>/ (each
// VMM's sockets and logs).
//
// Socket (-socket): see api.DefaultSocket. Mode 0600; with -socket-group
// 0660 and owned by that group.
//
// At start it checks its configuration (preflight.go: state directory,
// images, kernel, initramfs, VMM, /dev/kvm) and exits naming every
// problem. Flags may come from -config FILE (config.go); -log-format json
// logs JSON; under systemd (contrib/systemd) it sends READY=1 once it
// listens.
//
// Stopping the daemon (SIGINT, SIGTERM) leaves running boxes running; the
// next start takes them back, and restores those whose VMM died from
// their last completed checkpoint.
package main

import "github.com/sailbox-dev/sailbox/internal/cli"

func main() { cli.Main("sailboxd", run) }
