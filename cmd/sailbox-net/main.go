// Command sailbox-net is the user-space network of one box: a TCP/IP
// stack (internal/usernet) whose link is the SOCK_SEQPACKET socket its
// VMM connects to, with DHCP, DNS and NAT to host sockets under the
// box's egress policy, and a control API for counters and connections
// into the guest. Its flags and API are api/netapi's.
//
//	sailbox-net -socket PATH -control PATH -box ID [-mac MAC] [-no-internet]
//	    [-allow CIDR|ADDR|DOMAIN]... [-deny CIDR|ADDR|DOMAIN]... [-host NAME=IPV4]...
//
// It runs until SIGTERM or SIGINT, then removes its sockets and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/guestlog"
	"github.com/sailbox-dev/sailbox/internal/usernet"
)

// logMax caps the network's log (its stderr, which sailboxd points at
// net.log) and its one backup: the guest decides how many connections
// and lookups it makes, and so how much is logged.
const logMax = 4 << 20

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// run serves one box's network until ctx is done; it returns the exit
// status.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	stderr = guestlog.CapOutput(stderr, logMax)
	stdlog.SetOutput(stderr)
	l, err := netapi.ParseLaunch(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "sailbox-net:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	routeLibraryLogs(log.With("box", l.Box))
	if err := serve(ctx, l, log); err != nil {
		log.Error("sailbox-net: "+err.Error(), "box", l.Box)
		return 1
	}
	return 0
}

func serve(ctx context.Context, l netapi.Launch, log *slog.Logger) error {
	n, err := usernet.New(usernet.Config{
		Box: l.Box, MAC: l.MAC, NoInternet: l.NoInternet,
		Allow: l.Allow, Deny: l.Deny, Hosts: l.Hosts, Log: log,
	})
	if err != nil {
		return err
	}
	defer n.Close()
	frames, err := listen("unixpacket", l.Socket)
	if err != nil {
		return err
	}
	defer frames.Close()
	control, err := listen("unix", l.Control)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           n.ControlHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() {
		err := srv.Serve(control)
		cancel() // a control socket that fails stops the network too
		served <- err
	}()
	log.Info("sailbox-net: serving", "box", l.Box, "socket", l.Socket, "control", l.Control,
		"no_internet", l.NoInternet, "allow", l.Allow, "deny", l.Deny)

	err = n.Serve(ctx, frames)
	shutdownCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
	defer done()
	srv.Shutdown(shutdownCtx) // dials in progress end with the stack
	if serr := <-served; err == nil && !errors.Is(serr, http.ErrServerClosed) {
		err = fmt.Errorf("control: %w", serr)
	}
	log.Info("sailbox-net: stopped", "box", l.Box)
	return err
}

// listen listens on the Unix socket path (network "unix" or
// "unixpacket"), mode 0600, replacing a socket a previous run left there
// (never another kind of file). Closing the listener removes it.
func listen(network, path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
		os.Remove(path)
	}
	l, err := net.Listen(network, path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
