// Package vmmapi is the control API of one sailbox-vmm process: JSON over
// HTTP on a per-VM Unix socket. The daemon (and operators with curl
// --unix-socket) use it to watch and stop the VM.
//
//	GET  /status    → Status
//	POST /shutdown  → 202; the VM stops and the process exits 0
//
// Errors are JSON {"error": "..."} with a 4xx/5xx status.
package vmmapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Status describes the VM.
type Status struct {
	State     string    `json:"state"` // "running" or "stopping"
	VCPUs     int       `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	StartedAt time.Time `json:"started_at"`
	PID       int       `json:"pid"`
}

// Controller is what the server drives; sailbox-vmm implements it.
type Controller interface {
	Status() Status
	Shutdown()
}

type errorBody struct {
	Error string `json:"error"`
}

// Handler returns the HTTP handler serving c.
func Handler(c Controller) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.Status())
	})
	mux.HandleFunc("POST /shutdown", func(w http.ResponseWriter, r *http.Request) {
		c.Shutdown()
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Serve serves c on l until ctx ends.
func Serve(ctx context.Context, l net.Listener, c Controller) error {
	srv := &http.Server{Handler: Handler(c), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("vmm api: %w", err)
	}
	return nil
}

// Client talks to one VMM's control socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Status returns the VM's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/status", http.StatusOK, &s)
	return s, err
}

// Shutdown asks the VMM to stop the VM and exit.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/shutdown", http.StatusAccepted, nil)
}

func (c *Client) do(ctx context.Context, method, path string, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://vmm"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("vmm api %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("vmm api %s %s: %w", method, path, err)
	}
	if resp.StatusCode != want {
		var e errorBody
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("vmm api %s %s: %s (%d)", method, path, e.Error, resp.StatusCode)
		}
		return fmt.Errorf("vmm api %s %s: status %d", method, path, resp.StatusCode)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("vmm api %s %s: decode: %w", method, path, err)
		}
	}
	return nil
}
