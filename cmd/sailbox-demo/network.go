package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// The demo's network step: a box fetches a file the demo serves on this
// host's loopback, which its network reaches as hostLoopback because the
// box's policy allows it; everything else is refused, never dialled.

// hostLoopback is the host's 127.0.0.1 as a box sees it (api/netapi's
// HostIP).
const hostLoopback = "192.168.127.254"

// demoPolicy is the egress policy of the demo's boxes: no internet, the
// host's loopback allowed.
var demoPolicy = []string{"--no-internet", "--allow", hostLoopback}

// fetchedText is what the demo serves and the box fetches.
const fetchedText = "fetched from the host over the box's own network\n"

// serveFile serves fetchedText at /hello.txt on 127.0.0.1 until ctx
// ends, and returns its URL as a box sees it.
func serveFile(ctx context.Context) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("serve the demo's file: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello.txt", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(fetchedText))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	context.AfterFunc(ctx, func() { srv.Close() })
	return fmt.Sprintf("http://%s:%d/hello.txt", hostLoopback, l.Addr().(*net.TCPAddr).Port), nil
}

// network shows box id's network: a fetch its policy allows, one it
// refuses, and the counters.
func (s *session) network(ctx context.Context, id string) error {
	s.say("Its network, a user-space TCP/IP stack of its own: under its policy (no internet; %s, the host's loopback, allowed) it fetches a file the demo serves on this host's 127.0.0.1…", hostLoopback)
	out, err := s.run(ctx, "exec", id, "--", "curl", "-sS", s.fileURL)
	if err != nil {
		return err
	}
	if out != fetchedText {
		return fmt.Errorf("curl fetched %q, want %q", out, fetchedText)
	}
	s.say("…and any other address is refused at once (the host never dials it).")
	out, err = s.run(ctx, "exec", id, "--", "sh", "-c", "curl -sS --max-time 30 http://192.0.2.1/ || echo refused: curl exit $?")
	if err != nil {
		return err
	}
	if !strings.Contains(out, "refused: curl exit 7") {
		return fmt.Errorf("a fetch the policy refuses printed %q, want curl's exit 7 (could not connect)", out)
	}
	out, err = s.run(ctx, "net", id)
	if err != nil {
		return err
	}
	if !strings.Contains(out, "refused") || !strings.Contains(out, "connections out") {
		return fmt.Errorf("sail net printed %q, want the network's counters", out)
	}
	return nil
}
