// Package vmmapi is the control API of one sailbox-vmm process: JSON over
// HTTP on a per-VM Unix socket. The daemon (and operators with curl
// --unix-socket) use it to watch and stop the VM.
//
//	GET  /status      → Status
//	POST /shutdown    → 202; the VM stops and the process exits 0
//	POST /pause       → 204; every vCPU and device stops
//	POST /resume      → 204
//	POST /checkpoint  CheckpointRequest → CheckpointResult (the VM keeps running)
//	POST /fork        ForkRequest → ForkResult: a checkpoint, then a child
//	                  VMM restored from it; the parent keeps running
//	GET  /vcpus       → VCPUs: where each vCPU is, for a guest that stopped
//	                  answering (the VM pauses for a moment)
//	POST /working-set → WorkingSetResult: a restored VM records the pages its
//	                  guest used since the restore, for later restores of its
//	                  checkpoint to map ahead (409 for a booted VM)
//
// Errors are JSON {"error": "..."} with a 4xx/5xx status: 400 for a
// malformed request, 409 for a call the VM's state does not allow (pause
// of a paused VM, checkpoint without a store, an existing checkpoint ID).
package vmmapi

import (
	"bytes"
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

// CheckpointRequest names the checkpoint to write in the VMM's store.
type CheckpointRequest struct {
	ID string `json:"id"`
}

// CheckpointResult describes a completed checkpoint and what it cost.
type CheckpointResult struct {
	ID          string    `json:"id"`
	Parent      string    `json:"parent,omitempty"`
	Created     time.Time `json:"created"`
	Pages       uint64    `json:"pages"`        // guest pages in its memory layer
	PageBytes   int64     `json:"page_bytes"`   // their bytes
	LayerBytes  int64     `json:"layer_bytes"`  // the memory layer file
	PausedPages uint64    `json:"paused_pages"` // pages copied while the guest was stopped
	DiskBytes   int64     `json:"disk_bytes"`   // disk blocks sealed
	PauseNanos  int64     `json:"pause_ns"`     // how long the guest was stopped
	TotalNanos  int64     `json:"total_ns"`
}

// ForkRequest asks for a fork: checkpoint CheckpointID, then a child VMM
// restored from it whose guest is named Name (hostname, machine-id).
type ForkRequest struct {
	CheckpointID    string `json:"checkpoint_id"`
	Name            string `json:"name"`
	ChildAPISocket  string `json:"child_api_socket"`
	ChildVsockUDS   string `json:"child_vsock_uds"`
	ChildConsoleLog string `json:"child_console_log,omitempty"`
}

// ForkResult is the checkpoint the child was restored from, and the
// child's process.
type ForkResult struct {
	Checkpoint CheckpointResult `json:"checkpoint"`
	ChildPID   int              `json:"child_pid"`
}

// VCPUs describes where each vCPU is: registers, pending interrupts and
// events, in words for a person (no stable format).
type VCPUs struct {
	Description string `json:"description"`
}

// WorkingSetResult says whether the VM's working set was recorded: false
// when its checkpoint had one already (the first recorded stays).
type WorkingSetResult struct {
	Saved bool `json:"saved"`
}

// Controller is what the server drives; sailbox-vmm implements it.
// Errors of type *Error carry their HTTP status; others are 500.
type Controller interface {
	Status() Status
	Shutdown()
	Pause() error
	Resume() error
	Checkpoint(CheckpointRequest) (CheckpointResult, error)
	Fork(ForkRequest) (ForkResult, error)
	DescribeVCPUs() string
	SaveWorkingSet() (WorkingSetResult, error)
}

// Error is an error with the HTTP status the server answers it with.
type Error struct {
	Status int
	Err    error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// maxRequest bounds a request body.
const maxRequest = 64 << 10

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
	mux.HandleFunc("POST /pause", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusNoContent, nil, c.Pause())
	})
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusNoContent, nil, c.Resume())
	})
	mux.HandleFunc("POST /checkpoint", func(w http.ResponseWriter, r *http.Request) {
		var req CheckpointRequest
		if !decode(w, r, &req) {
			return
		}
		if req.ID == "" {
			writeJSON(w, http.StatusBadRequest, errorBody{"checkpoint: id is required"})
			return
		}
		res, err := c.Checkpoint(req)
		reply(w, http.StatusOK, res, err)
	})
	mux.HandleFunc("POST /fork", func(w http.ResponseWriter, r *http.Request) {
		var req ForkRequest
		if !decode(w, r, &req) {
			return
		}
		if req.CheckpointID == "" {
			writeJSON(w, http.StatusBadRequest, errorBody{"fork: checkpoint_id is required"})
			return
		}
		res, err := c.Fork(req)
		reply(w, http.StatusOK, res, err)
	})
	mux.HandleFunc("GET /vcpus", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, VCPUs{c.DescribeVCPUs()})
	})
	mux.HandleFunc("POST /working-set", func(w http.ResponseWriter, r *http.Request) {
		res, err := c.SaveWorkingSet()
		reply(w, http.StatusOK, res, err)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

// decode reads a JSON request body strictly; on failure it answers 400
// and reports false.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{fmt.Sprintf("malformed request: %v", err)})
		return false
	}
	return true
}

// reply answers v with code, or err with its status.
func reply(w http.ResponseWriter, code int, v any, err error) {
	if err != nil {
		status := http.StatusInternalServerError
		var e *Error
		if errors.As(err, &e) {
			status = e.Status
		}
		writeJSON(w, status, errorBody{err.Error()})
		return
	}
	if v == nil {
		w.WriteHeader(code)
		return
	}
	writeJSON(w, code, v)
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

// Pause stops the VM's vCPUs and devices.
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/pause", http.StatusNoContent, nil)
}

// Resume lets a paused VM run.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/resume", http.StatusNoContent, nil)
}

// Checkpoint writes checkpoint id of the running VM.
func (c *Client) Checkpoint(ctx context.Context, id string) (CheckpointResult, error) {
	var res CheckpointResult
	err := c.doJSON(ctx, "/checkpoint", CheckpointRequest{ID: id}, &res)
	return res, err
}

// Fork checkpoints the VM and starts a child VMM restored from it.
func (c *Client) Fork(ctx context.Context, req ForkRequest) (ForkResult, error) {
	var res ForkResult
	err := c.doJSON(ctx, "/fork", req, &res)
	return res, err
}

// SaveWorkingSet asks a restored VM to record its working set.
func (c *Client) SaveWorkingSet(ctx context.Context) (WorkingSetResult, error) {
	var res WorkingSetResult
	err := c.send(ctx, http.MethodPost, "/working-set", nil, http.StatusOK, &res)
	return res, err
}

// DescribeVCPUs returns where each of the VM's vCPUs is.
func (c *Client) DescribeVCPUs(ctx context.Context) (string, error) {
	var v VCPUs
	err := c.do(ctx, http.MethodGet, "/vcpus", http.StatusOK, &v)
	return v.Description, err
}

func (c *Client) doJSON(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.send(ctx, http.MethodPost, path, bytes.NewReader(body), http.StatusOK, out)
}

func (c *Client) do(ctx context.Context, method, path string, want int, out any) error {
	return c.send(ctx, method, path, nil, want, out)
}

func (c *Client) send(ctx context.Context, method, path string, in io.Reader, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://vmm"+path, in)
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
