package main

// -inference-listen: the inference proxy on a TCP address, for clients
// that take a base URL (an OpenAI-compatible SDK) rather than a Unix
// socket. Only the proxy's routes are served there
// (apiserver.Server.InferenceHandler); the box lifecycle API stays on the
// socket, whose file permissions are its access control.
//
// The proxy asks no credentials: whoever reaches the address can put any
// box whose ID they know to sleep for as long as a call of theirs lasts,
// and spend the upstream on the daemon's network position. So the
// address must be a loopback one unless -inference-listen-public says
// otherwise (for a host whose firewall or network namespace does the
// restricting).

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/sailbox-dev/sailbox/internal/apiserver"
)

// inferenceAddr resolves c's -inference-listen, refusing an address that
// is not loopback unless -inference-listen-public, and an address without
// an upstream to proxy to. "" (no listener) resolves to nil.
func inferenceAddr(c config) (*net.TCPAddr, error) {
	if c.InferenceListen == "" {
		return nil, nil
	}
	if c.Inference == "" {
		return nil, fmt.Errorf("-inference-listen %s: no -inference-upstream to proxy to", c.InferenceListen)
	}
	a, err := net.ResolveTCPAddr("tcp", c.InferenceListen)
	if err != nil {
		return nil, fmt.Errorf("-inference-listen: %w", err)
	}
	if !c.InferencePublic && !a.IP.IsLoopback() {
		return nil, fmt.Errorf("-inference-listen %s is not a loopback address: the proxy asks no credentials, so anyone reaching it could put boxes to sleep and use the upstream (give 127.0.0.1:PORT, or -inference-listen-public to serve it there anyway)", c.InferenceListen)
	}
	return a, nil
}

// serveInference serves srv's inference routes on addr until ctx ends,
// then shuts down as apiserver.Serve does, and reports on the returned
// channel how serving ended; a nil addr serves nothing (and reports nil).
// The address is bound before serveInference returns.
func serveInference(ctx context.Context, addr *net.TCPAddr, srv *apiserver.Server, log *slog.Logger) (<-chan error, error) {
	done := make(chan error, 1)
	if addr == nil {
		done <- nil
		return done, nil
	}
	l, err := net.ListenTCP("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-inference-listen: %w", err)
	}
	log.Info("serving inference", "address", l.Addr().String(), "path", "/v1/inference/")
	go func() {
		err := apiserver.Serve(ctx, l, srv.InferenceHandler())
		if err != nil {
			err = fmt.Errorf("-inference-listen: %w", err)
			log.Error("inference server stopped", "err", err)
		}
		done <- err
	}()
	return done, nil
}
