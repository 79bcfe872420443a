// Command sailbox-agent is the Sailbox guest agent. It runs inside the
// guest, started by u-root's init (-uinitcmd=sailbox-agent), and answers the
// host's requests on a vsock port until it receives SIGTERM. See package
// guestagent for the protocol.
//
// When it runs in the guest, which it assumes when its parent is PID 1 and
// PID 1 is called "init", or when given -guest, it first prepares the
// guest with guestagent.PrepareGuest (busybox commands, hostname, /tmp),
// and then, if the kernel command line names the box's disk as its root
// (sailbox.root=/dev/vda), moves into it with guestagent.MountRoot, so
// that every exec and file op acts on the image. If that fails, it serves
// all the same, from its initramfs, and refuses exec and the file ops
// with an error that says why (guestagent.Server.RootErr). Then, if the
// command line configures a network (sailbox.net=, for a box with one),
// it configures eth0 and the root's resolver with
// guestagent.ConfigureNetwork; a failure is logged, and the agent serves
// without a network.
// Only in the guest does it perform the restored op, which sets the
// guest's clock, reseeds its random number generator and renames it after
// a restore or fork (guestagent.Server.Guest): on a host it would do all
// that to the host.
//
// It must be built statically (CGO_ENABLED=0): the guest has nothing but
// the kernel and the initramfs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sailbox-dev/sailbox/guestagent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sailbox-agent: %v\n", err)
		os.Exit(1)
	}
}

// listen opens the agent's listener, prepareGuest readies the guest,
// mountRoot moves the agent into the box's root file system and
// configureNetwork sets its network up; tests replace them.
var (
	listen           = guestagent.ListenVsock
	prepareGuest     = guestagent.PrepareGuest
	mountRoot        = guestagent.MountRoot
	configureNetwork = guestagent.ConfigureNetwork
)

// startedByInit reports whether the agent's parent is PID 1 and is called
// "init", as u-root's init is in the guest.
func startedByInit() bool {
	if os.Getppid() != 1 {
		return false
	}
	comm, err := os.ReadFile("/proc/1/comm")
	return err == nil && strings.TrimSpace(string(comm)) == "init"
}

// run is the agent: it parses args (args[0] is the program name), prepares
// the guest if it runs in one, listens, announces itself on stdout with one
// line, logs to stderr, and serves until ctx is cancelled.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	name := "sailbox-agent"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Uint("port", uint(guestagent.Port), "vsock `port` to listen on")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	guest := fs.Bool("guest", false, "prepare the guest (busybox commands, hostname, /tmp, the root file system that sailbox.root= names) before serving, and serve the restored op (clock, entropy, identity); implied when started by init")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *port > math.MaxUint32 {
		return fmt.Errorf("-port %d: out of range", *port)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	inGuest := *guest || startedByInit()
	var rootErr error
	if inGuest {
		// The host can still look into whatever went wrong once the agent
		// serves, so a failure here is not fatal.
		if err := prepareGuest(logger); err != nil {
			logger.Error("agent: preparing the guest", "err", err)
		}
		// Before the listener: the host's first request, once the agent
		// answers, must see the box's root. vsock needs no path, so the
		// listener works in either root.
		if rootErr = mountRoot(logger); rootErr != nil {
			logger.Error("agent: the box's root file system is unavailable; exec and file requests will fail", "err", rootErr)
		}
		// After the root: the resolver's configuration is the root's.
		if err := configureNetwork(logger); err != nil {
			logger.Error("agent: the guest's network is not configured", "err", err)
		}
	}
	l, err := listen(uint32(*port))
	if err != nil {
		return err
	}
	// The host watches the serial console for this line.
	fmt.Fprintf(stdout, "sailbox-agent %s schema %d listening on vsock port %d\n",
		guestagent.AgentVersion, guestagent.GuestSchemaVersion, *port)
	srv := &guestagent.Server{Logger: logger, Guest: inGuest, RootErr: rootErr}
	return srv.Serve(ctx, l)
}
