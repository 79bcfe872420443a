package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/metrics"
)

// serveMetrics serves met, with m's boxes by state, on /metrics of TCP
// address addr until stop is called; "" serves nothing. The address is
// bound exactly as given: the metrics carry no box IDs or secrets, but
// the operator decides who may read them (loopback is the safe choice).
func serveMetrics(addr string, met *metrics.Metrics, m *daemon.Manager, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	met.CountBoxes(m)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", met.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("serving metrics", "address", l.Addr().String(), "path", "/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}
