// Command sail is the command-line client of sailboxd.
//
//	sail create -mem 512            # a new box; prints its ID
//	sail ls                         # every box
//	sail exec sb-1a2b3c uname -a    # run a command (wakes a sleeping box)
//	sail sleep sb-1a2b3c            # checkpoint and power down until used
//	sail fork sb-1a2b3c             # a new box from this one
//	sail --json get sb-1a2b3c       # machine-readable output
//
// It talks to the daemon's socket (-socket, default $SAILBOX_SOCKET or
// the daemon's default). sail exec exits with the command's exit code;
// other failures exit 1 with a message, usage errors 2.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var exit exitCode
	switch {
	case errors.As(err, &exit):
		os.Exit(int(exit))
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "sail:", err)
		os.Exit(1)
	}
}
