// Package cli is the one main of Sailbox's long-running commands: each
// command's own run function does the work, and Main gives it a context
// that SIGINT or SIGTERM cancels, its arguments and the standard streams,
// and turns its error into a message after the command's name and exit
// status 1.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Run is a command's body.
type Run func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Main runs run for the command called name and exits 1 if it fails.
func Main(name string, run Run) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
