package main

import (
	"context"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"os"
	"runtime/debug"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/internal/guestlog"
	"github.com/sailbox-dev/sailbox/internal/vmmcontrol"
	"github.com/sailbox-dev/sailbox/internal/vmmlandlock"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/seccomp"
)

// consoleLogMax caps the console log file and its one backup: the guest
// decides how much it prints, and its console costs at most twice this
// much host disk.
const consoleLogMax = 8 << 20

// ownLogMax caps the VMM's own log (its stderr, when its starter points
// that at a file: sailboxd's vmm.log) and its one backup, for a VMM that
// a guest makes chatty despite the rate limits on what it can cause.
const ownLogMax = 4 << 20

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	tuneGC()
	stderr = guestlog.CapOutput(stderr, ownLogMax)
	stdlog.SetOutput(stderr)
	c, err := vmmapi.ParseLaunch(args, stderr)
	if err != nil {
		return err
	}
	if err := forbidCoreDumps(); err != nil {
		return err
	}

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var console []io.Writer
	if c.Console {
		console = append(console, stdout)
	}
	if c.ConsoleLog != "" {
		f, err := guestlog.OpenCapped(c.ConsoleLog, consoleLogMax, log)
		if err != nil {
			return fmt.Errorf("console log: %w", err)
		}
		defer f.Close()
		console = append(console, f)
	}

	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	defer sys.Close()
	var root *snapshot.Root
	if c.Store != "" {
		if root, err = snapshot.OpenRoot(c.Store, nil); err != nil {
			return err
		}
	}
	var m *vmm.Machine
	if c.Restore != "" {
		m, err = vmm.Restore(sys, vmm.RestoreConfig{
			Root:          root,
			ID:            c.Restore,
			VsockUDSPath:  c.VsockUDS,
			NetSocketPath: c.NetSocket,
			Logger:        log,
			Serial:        io.MultiWriter(console...),
		})
	} else {
		var disks []vmm.Disk
		if c.DisksFrom != "" {
			disks, err = vmm.CheckpointDisks(root, c.DisksFrom, "boot-"+randomName())
		} else {
			disks, err = openDisks(c, root)
		}
		if err != nil {
			return err
		}
		var vs *vmm.Vsock
		if c.VsockCID != 0 {
			vs = &vmm.Vsock{CID: c.VsockCID, UDSPath: c.VsockUDS}
		}
		var network *vmm.Net
		if c.NetSocket != "" {
			network = &vmm.Net{SocketPath: c.NetSocket, MAC: c.NetMAC}
		}
		m, err = vmm.New(sys, vmm.Config{
			KernelPath: c.Kernel,
			InitrdPath: c.Initrd,
			Cmdline:    c.Cmdline,
			MemoryMiB:  c.MemoryMiB,
			VCPUs:      c.VCPUs,
			Disks:      disks,
			Vsock:      vs,
			Net:        network,
			Logger:     log,
			Serial:     io.MultiWriter(console...),
		})
		if err != nil {
			// The machine never owned the disks: close them, which
			// deletes their new tops.
			for _, d := range disks {
				if d.Layered != nil {
					d.Layered.Close()
				}
			}
		}
	}
	if err != nil {
		return err
	}
	defer m.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.APISocket != "" {
		l, err := listenUnix(c.APISocket)
		if err != nil {
			return err
		}
		defer os.Remove(c.APISocket)
		go vmmapi.Serve(ctx, l, vmmcontrol.New(m, c, root))
	}
	fixedUp := make(chan struct{})
	if c.Restore != "" && c.VsockUDS != "" {
		go func() {
			defer close(fixedUp)
			vmmcontrol.FixUpRestoredGuest(ctx, c, log)
		}()
	} else {
		close(fixedUp)
	}

	if err := vmmlandlock.Restrict(c, log); err != nil {
		return err
	}
	if err := seccomp.Install(c.Seccomp); err != nil {
		return err
	}
	// Building the machine (a kernel read in, a checkpoint's layers read)
	// leaves freed heap that the Go runtime hands back to the host only
	// slowly. Returned at once, off the path to the guest's first
	// instruction. Alone it did little (a forked VMM's private memory
	// 6.54 MiB with it, 6.71 without, in make bench's density rows); the
	// lower GOGC (gc.go) is what keeps the heap small after.
	go debug.FreeOSMemory()
	exit, err := m.Run(ctx)
	// The exit line below is the log's last: the daemon quotes it, and
	// tells a guest the host's KVM broke (a triple fault) by it.
	cancel()
	<-fixedUp
	if err != nil {
		return fmt.Errorf("vm stopped (%v): %w", exit, err)
	}
	fmt.Fprintf(stderr, "sailbox-vmm: guest %v\n", exit)
	return nil
}

// listenUnix listens on path, replacing a stale socket file but never any
// other kind of file.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api socket %s exists and is not a socket", path)
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	return l, nil
}
