// Command sailbox-demo is the project's main job: it shows what Sailbox can
// do today on this host's real KVM. `make demo` runs it, inside the KVM lab
// when the host has no usable /dev/kvm.
//
// It boots the project's guest kernel and initramfs on the Sailbox VMM,
// waits for the guest agent, runs commands in the guest over vsock, and
// powers the guest off.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sailbox-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sailbox-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kernel := fs.String("kernel", os.Getenv("SAILBOX_GUEST_KERNEL"), "guest kernel (default $SAILBOX_GUEST_KERNEL)")
	initrd := fs.String("initrd", os.Getenv("SAILBOX_GUEST_INITRAMFS"), "guest initramfs (default $SAILBOX_GUEST_INITRAMFS)")
	cpus := fs.Int("cpus", 2, "vCPUs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kernel == "" || *initrd == "" {
		return errors.New("need the guest kernel and initramfs (make demo builds them)")
	}
	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	defer sys.Close()
	say := func(format string, a ...any) { fmt.Fprintf(stdout, "== "+format+"\n", a...) }
	say("KVM: %s backed by %s", kvm.DevicePath, kvm.HostBackend())

	dir, err := os.MkdirTemp("", "sailbox-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	uds := filepath.Join(dir, "vsock")
	console, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		return err
	}
	defer console.Close()

	say("Booting Linux on the Sailbox VMM (%d vCPUs, 256 MiB, virtio-rng and virtio-vsock)", *cpus)
	start := time.Now()
	m, err := vmm.New(sys, vmm.Config{
		KernelPath: *kernel, InitrdPath: *initrd, MemoryMiB: 256, VCPUs: *cpus,
		Cmdline: "quiet", Serial: console, Vsock: &vmm.Vsock{CID: 3, UDSPath: uds},
	})
	if err != nil {
		return err
	}
	defer m.Close()
	var (
		exit    vmm.Exit
		runErr  error
		stopped = make(chan struct{}) // closed when Run returns, after exit and runErr are set
	)
	go func() {
		exit, runErr = m.Run(ctx)
		close(stopped)
	}()
	defer func() { m.Stop(); <-stopped }()

	agent := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		return guestagent.DialHybridVsock(ctx, uds, guestagent.Port)
	}}
	health, err := agent.WaitHealthy(ctx, 50*time.Millisecond, stopped)
	if errors.Is(err, guestagent.ErrGone) {
		return fmt.Errorf("the guest stopped (%v, %v) before its agent answered: %w", exit, runErr, err)
	}
	if err != nil {
		return err
	}
	say("Guest agent %s (guest_schema_version %d) ready after %v", health.AgentVersion, health.GuestSchemaVersion, time.Since(start).Round(time.Millisecond))

	for _, argv := range [][]string{
		{"uname", "-a"},
		{"nproc"},
		{"sh", "-c", "echo hello from $(hostname), pid $$; exit 3"},
	} {
		t0 := time.Now()
		out, errOut, code, err := agent.Run(ctx, argv...)
		if err != nil {
			return fmt.Errorf("exec %q: %w", argv, err)
		}
		say("$ %s   (exit %d, %v)", strings.Join(argv, " "), code, time.Since(t0).Round(time.Millisecond))
		stdout.Write(out)
		stdout.Write(errOut)
	}

	say("Powering the guest off from inside (poweroff -f)")
	go agent.Run(ctx, "poweroff", "-f")
	select {
	case <-stopped:
		if runErr != nil {
			return runErr
		}
		say("The VM ended: %v", exit)
	case <-time.After(2 * time.Minute):
		return errors.New("the guest did not power off")
	}
	return nil
}
