package vmmapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm"
)

// Controller is what the server drives; sailbox-vmm implements it.
// statusOf gives its errors their HTTP status.
type Controller interface {
	Status() Status
	Shutdown()
	Pause() error
	Resume() error
	Checkpoint(CheckpointRequest) (CheckpointResult, error)
	DescribeVCPUs() string
	SaveWorkingSet() (WorkingSetResult, error)
}

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

// statusOf is the one place where a Controller's errors become HTTP
// statuses: the VMM's refusals of a call its state does not allow are
// 409, a request it cannot serve as asked is 400, a full disk 507,
// anything else 500.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrNoSpace), errors.Is(err, syscall.ENOSPC):
		return http.StatusInsufficientStorage
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrConflict),
		errors.Is(err, vmm.ErrNotRunning),
		errors.Is(err, vmm.ErrNotCheckpointable),
		errors.Is(err, snapshot.ErrExists):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// reply answers v with code, or err with its status.
func reply(w http.ResponseWriter, code int, v any, err error) {
	if err != nil {
		writeJSON(w, statusOf(err), errorBody{err.Error()})
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
