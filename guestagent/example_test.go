package guestagent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/sailbox-dev/sailbox/guestagent"
)

// The host checks a guest's agent through the VMM's hybrid vsock socket.
func ExampleClient_Health() {
	c := guestagent.NewHybridClient("/run/sailbox/vm0/vsock.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := c.Health(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if h.GuestSchemaVersion > guestagent.GuestSchemaVersion {
		log.Fatalf("guest agent %s speaks schema %d, newer than this host's %d", h.AgentVersion, h.GuestSchemaVersion, guestagent.GuestSchemaVersion)
	}
	fmt.Println("agent", h.AgentVersion, "is", h.Status)
}

// Right after restoring a box from a snapshot, or forking one, and before
// anything else, the host fixes up the guest: clock, entropy and, for a
// fork, identity.
func ExampleClient_Restored() {
	c := guestagent.NewHybridClient("/run/sailbox/vm1/vsock.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	fork, boxID := true, "9f2c41"
	args := guestagent.RestoreArgs() // a box restored in place keeps its identity
	if fork {
		var err error
		if args, err = guestagent.ForkArgs(boxID); err != nil {
			log.Fatal(err)
		}
	}
	res, err := c.Restored(ctx, args)
	if errors.Is(err, errors.ErrUnsupported) {
		log.Fatalf("box %s: agent too old to restore safely; upgrade it: %v", boxID, err)
	}
	if err != nil {
		log.Fatalf("box %s: %v", boxID, err) // a fork in doubt must not run
	}
	log.Printf("box %s: clock was %v behind; %d bits of entropy, reseeded %v",
		boxID, res.ClockAfter.Sub(res.ClockBefore).Round(time.Millisecond), res.EntropyBits, res.Reseeded)
}

// The host runs a command in the guest, streaming its output.
func ExampleClient_Exec() {
	c := guestagent.NewHybridClient("/run/sailbox/vm0/vsock.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Exec(ctx, guestagent.ExecRequest{
		Argv:    []string{"sh", "-c", "uname -a; nproc"},
		Timeout: 30 * time.Second,
	}, nil, os.Stdout, os.Stderr)
	var ae *guestagent.Error
	switch {
	case errors.As(err, &ae) && ae.Code == guestagent.CodeExecFailed:
		log.Fatalf("no shell in the guest: %v", err)
	case err != nil:
		log.Fatal(err)
	case res.TimedOut || res.ExitCode != 0:
		log.Fatalf("command failed: %+v", res)
	}
}

// The host forwards a TCP connection to a server in the guest, and
// half-closes it once its request is sent.
func ExampleClient_DialTCP() {
	c := guestagent.NewHybridClient("/run/sailbox/vm0/vsock.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.DialTCP(ctx, "", 8080) // the guest's 127.0.0.1:8080
	var ae *guestagent.Error
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		log.Fatalf("the guest's agent needs an upgrade: %v", err)
	case errors.As(err, &ae) && ae.Code == guestagent.CodeConnRefused:
		log.Fatalf("nothing listens on port 8080 in the guest: %v", err)
	case err != nil:
		log.Fatal(err)
	}
	defer conn.Close() // ctx bounded the dial only
	io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
	conn.(interface{ CloseWrite() error }).CloseWrite()
	io.Copy(os.Stdout, conn) // until the server closes its side
}

// Inside the guest, the agent serves on its vsock port until ctx ends.
func ExampleServer_Serve() {
	l, err := guestagent.ListenVsock(guestagent.Port)
	if err != nil {
		log.Fatal(err)
	}
	srv := &guestagent.Server{}
	if err := srv.Serve(context.Background(), l); err != nil {
		log.Fatal(err)
	}
}
