// Package apiserver is sailboxd's HTTP API: JSON over a Unix socket, served
// from a daemon.Manager. The routes are in one table (Routes), which
// api/openapi.yaml documents and a test holds equal to it; statusOf is the
// one place where errors become HTTP statuses.
//
// Exec answers in a stream: see api.ExecEvent for the framing. File reads
// answer the raw bytes (application/octet-stream) and file writes take
// them; a read that fails after its first bytes were sent is cut short
// (the connection is aborted), so a complete answer is always the whole
// file.
package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// Bounds on request bodies.
const (
	maxRequest     = 64 << 10 // JSON requests
	maxExecRequest = 16 << 20 // exec, whose stdin travels inline
	// maxInference bounds an inference call's request, which the proxy
	// holds to send it upstream (its answer is streamed: inference.go).
	maxInference = 64 << 20
)

// Config configures a Server.
type Config struct {
	Manager *daemon.Manager
	Logger  *slog.Logger // nil discards
	// InferenceUpstream is the base URL inference calls are proxied to:
	// /v1/inference/P goes to InferenceUpstream/P. Nil answers 501.
	InferenceUpstream *url.URL
	// InferenceClient makes the upstream calls; nil uses a client with a
	// 10-minute timeout (which bounds a streamed answer too). Its redirect policy is replaced: the proxy never
	// follows a redirect but answers it, as a reverse proxy does.
	InferenceClient *http.Client
	// BodyTimeout bounds the time a client may take to send a call's
	// body; zero means DefaultBodyTimeout. See limitBodyTime.
	BodyTimeout time.Duration
	// Observe, if not nil, hears every lifecycle call served: see
	// observe.go.
	Observe CallObserver
}

// Server serves the API.
type Server struct {
	m           *daemon.Manager
	log         *slog.Logger
	upstream    *url.URL
	client      *http.Client
	bodyTimeout time.Duration
	observe     CallObserver
	mux         *http.ServeMux
	// inferenceMux serves the inference routes alone (InferenceHandler).
	inferenceMux *http.ServeMux
}

// Route is one endpoint: a method and a path pattern in ServeMux syntax
// ("/v1/boxes/{id}").
type Route struct {
	Method, Pattern string
}

type route struct {
	Route
	// call names the lifecycle call the route serves, for metrics
	// (Config.Observe); "" for reads, which are not observed.
	call string
	h    func(w http.ResponseWriter, r *http.Request) error
}

// New returns a Server.
func New(cfg Config) *Server {
	s := &Server{m: cfg.Manager, log: cfg.Logger, upstream: cfg.InferenceUpstream, client: cfg.InferenceClient, bodyTimeout: cfg.BodyTimeout, observe: cfg.Observe}
	if s.bodyTimeout <= 0 {
		s.bodyTimeout = DefaultBodyTimeout
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: 10 * time.Minute}
	}
	// A redirect followed here could take the call, and the headers it
	// carries, to another host; the caller gets the 3xx instead.
	noRedirects := *s.client
	noRedirects.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	s.client = &noRedirects
	s.mux = s.newMux(func(route) bool { return true })
	s.inferenceMux = s.newMux(func(rt route) bool { return strings.HasPrefix(rt.Pattern, inferencePrefix) })
	return s
}

// newMux serves the routes that pass keep, and 404 for anything else.
func (s *Server) newMux(keep func(route) bool) *http.ServeMux {
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		if keep(rt) {
			mux.Handle(rt.Method+" "+rt.Pattern, s.wrap(s.observed(rt.call, rt.h)))
		}
	}
	mux.Handle("/", s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("%w: no such endpoint: %s %s", daemon.ErrNotFound, r.Method, r.URL.Path)
	}))
	return mux
}

// routes is the API: every endpoint, in one table.
func (s *Server) routes() []route {
	return []route{
		{Route{"POST", "/v1/boxes"}, "create", s.create},
		{Route{"GET", "/v1/boxes"}, "", s.list},
		{Route{"GET", "/v1/boxes/{id}"}, "", s.get},
		{Route{"DELETE", "/v1/boxes/{id}"}, "terminate", s.terminate},
		{Route{"GET", "/v1/boxes/{id}/checkpoints"}, "", s.checkpoints},
		{Route{"POST", "/v1/boxes/{id}/checkpoint"}, "checkpoint", s.checkpoint},
		{Route{"POST", "/v1/boxes/{id}/fork"}, "fork", s.fork},
		{Route{"POST", "/v1/boxes/{id}/pause"}, "pause", s.boxCall(s.m.Pause)},
		{Route{"POST", "/v1/boxes/{id}/sleep"}, "sleep", s.boxCall(s.m.Sleep)},
		{Route{"POST", "/v1/boxes/{id}/resume"}, "resume", s.boxCall(s.m.Resume)},
		{Route{"POST", "/v1/boxes/{id}/connect"}, "connect", s.boxCall(s.m.Connect)},
		{Route{"POST", "/v1/boxes/{id}/upgrade"}, "upgrade", s.upgrade},
		{Route{"POST", "/v1/boxes/{id}/extend"}, "extend", s.extend},
		{Route{"POST", "/v1/boxes/{id}/exec"}, "exec", s.exec},
		{Route{"GET", "/v1/boxes/{id}/files"}, "read_file", s.readFile},
		{Route{"PUT", "/v1/boxes/{id}/files"}, "write_file", uploading(s.writeFile)},
		{Route{"GET", "/v1/boxes/{id}/network"}, "", s.network},
		{Route{"POST", "/v1/boxes/{id}/ports"}, "expose", s.expose},
		{Route{"DELETE", "/v1/boxes/{id}/ports/{host_port}"}, "unexpose", s.unexpose},
		{Route{"GET", inferencePrefix + "{path...}"}, "inference", s.inference},
		{Route{"POST", inferencePrefix + "{path...}"}, "inference", s.inference},
	}
}

// Routes lists the API's endpoints.
func (s *Server) Routes() []Route {
	var out []Route
	for _, rt := range s.routes() {
		out = append(out, rt.Route)
	}
	return out
}

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// statusWriter remembers what a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// wrap bounds the time to send the call's body, turns the handler's error
// into an error answer and logs the call. A call cut short
// (cutShortError) has its connection aborted once it is logged.
func (s *Server) wrap(h func(w http.ResponseWriter, r *http.Request) error) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		s.limitBodyTime(rw, r)
		w := &statusWriter{ResponseWriter: rw}
		err := h(w, r)
		if err != nil && w.status == 0 {
			body := errorBody(err)
			writeJSON(w, body.Status, body)
		}
		level := slog.LevelDebug
		switch {
		case w.status >= 500:
			level = slog.LevelError
		case r.Method != http.MethodGet:
			level = slog.LevelInfo
		}
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", w.status, "duration", time.Since(start).Round(time.Microsecond)}
		if err != nil {
			attrs = append(attrs, "err", err)
		}
		var cut *cutShortError
		if errors.As(err, &cut) {
			s.log.Log(r.Context(), max(level, slog.LevelWarn), "api call cut short", attrs...)
			panic(http.ErrAbortHandler)
		}
		s.log.Log(r.Context(), level, "api", attrs...)
	})
}

// cutShortError is a call that failed after its answer began (a file read
// or an inference answer broken off midway). Its answer is cut short,
// the connection aborted, so that the client cannot take the part it got
// for the whole.
type cutShortError struct{ err error }

func (e *cutShortError) Error() string { return "answer cut short: " + e.err.Error() }
func (e *cutShortError) Unwrap() error { return e.err }

// badRequestError is a request the server could not read.
type badRequestError struct{ err error }

func (e *badRequestError) Error() string { return "malformed request: " + e.err.Error() }
func (e *badRequestError) Unwrap() error { return e.err }

func badRequest(format string, args ...any) error {
	return &badRequestError{fmt.Errorf(format, args...)}
}

// statusOf is the one place where errors become HTTP statuses and error
// codes.
func statusOf(err error) (int, string) {
	var bad *badRequestError
	var tooLarge *http.MaxBytesError
	var upstream *upstreamError
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, api.CodeTooLarge
	case errors.As(err, &bad), errors.Is(err, daemon.ErrInvalidArgument):
		return http.StatusBadRequest, api.CodeBadRequest
	case errors.Is(err, daemon.ErrNotFound):
		return http.StatusNotFound, api.CodeNotFound
	case errors.Is(err, lifecycle.ErrInvalidTransition):
		return http.StatusConflict, api.CodeInvalidTransition
	case errors.Is(err, daemon.ErrConflict):
		return http.StatusConflict, api.CodeConflict
	case errors.Is(err, daemon.ErrWrongHost):
		return http.StatusMisdirectedRequest, api.CodeWrongHost
	case errors.Is(err, daemon.ErrCapacity):
		return http.StatusInsufficientStorage, api.CodeCapacity
	case errors.Is(err, errors.ErrUnsupported):
		return http.StatusNotImplemented, api.CodeUnsupported
	case errors.As(err, &upstream):
		return http.StatusBadGateway, api.CodeUnavailable
	}
	return http.StatusInternalServerError, api.CodeInternal
}

// errorBody is err's answer.
func errorBody(err error) api.ErrorBody {
	status, code := statusOf(err)
	return api.ErrorBody{Error: err.Error(), Code: code, Status: status}
}

func writeJSON(w http.ResponseWriter, code int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	return json.NewEncoder(w).Encode(v)
}

// decode reads r's JSON body into v strictly: no unknown fields, no
// trailing data. An empty body leaves v as it is (every field optional
// at this level; the manager checks what it requires).
func decode(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		return badRequest("read body: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("data after the JSON value")
	}
	return nil
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateRequest
	if err := decode(w, r, maxRequest, &req); err != nil {
		return err
	}
	b, err := s.m.Create(r.Context(), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, b)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) error {
	var f daemon.ListFilter
	if v := r.URL.Query().Get("max_guest_schema_version"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return badRequest("max_guest_schema_version %q is not an integer", v)
		}
		f.MaxGuestSchemaVersion = &n
	}
	for _, kv := range r.URL.Query()["label"] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return badRequest("label %q is not KEY=VALUE", kv)
		}
		if err := daemon.CheckLabel(k, v); err != nil {
			return err
		}
		if f.Labels == nil {
			f.Labels = map[string]string{}
		}
		if old, dup := f.Labels[k]; dup && old != v {
			return badRequest("label %s is asked for twice, with two values", k)
		}
		f.Labels[k] = v
	}
	boxes, err := s.m.List(r.Context(), f)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.BoxList{Boxes: boxes})
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) error {
	b, err := s.m.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, b)
}

func (s *Server) network(w http.ResponseWriter, r *http.Request) error {
	st, err := s.m.Network(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, st)
}

func (s *Server) terminate(w http.ResponseWriter, r *http.Request) error {
	res, err := s.m.Terminate(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

func (s *Server) checkpoints(w http.ResponseWriter, r *http.Request) error {
	cks, err := s.m.Checkpoints(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.CheckpointList{Checkpoints: cks})
}

func (s *Server) checkpoint(w http.ResponseWriter, r *http.Request) error {
	if err := decode(w, r, maxRequest, &api.Empty{}); err != nil {
		return err
	}
	ck, err := s.m.Checkpoint(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, ck)
}

func (s *Server) fork(w http.ResponseWriter, r *http.Request) error {
	var req api.ForkRequest
	if err := decode(w, r, maxRequest, &req); err != nil {
		return err
	}
	res, err := s.m.Fork(r.Context(), r.PathValue("id"), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, res)
}

func (s *Server) extend(w http.ResponseWriter, r *http.Request) error {
	var req api.ExtendRequest
	if err := decode(w, r, maxRequest, &req); err != nil {
		return err
	}
	b, err := s.m.Extend(r.Context(), r.PathValue("id"), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, b)
}

// boxCall serves a call that takes no arguments and answers the box.
func (s *Server) boxCall(call func(context.Context, string) (api.Box, error)) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := decode(w, r, maxRequest, &api.Empty{}); err != nil {
			return err
		}
		b, err := call(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, b)
	}
}

func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) error {
	if err := decode(w, r, maxRequest, &api.Empty{}); err != nil {
		return err
	}
	res, err := s.m.Upgrade(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

// eventWriter writes an exec's ExecEvents as JSON lines, sending the 200
// header with the first.
type eventWriter struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
	err     error
}

func (e *eventWriter) send(ev api.ExecEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	if !e.started {
		e.w.Header().Set("Content-Type", "application/x-ndjson")
		e.w.WriteHeader(http.StatusOK)
		e.started = true
	}
	if e.err = json.NewEncoder(e.w).Encode(ev); e.err == nil {
		e.err = e.rc.Flush()
	}
	return e.err
}

func (e *eventWriter) hasStarted() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.started
}

type streamWriter struct {
	e      *eventWriter
	stderr bool
}

func (s streamWriter) Write(p []byte) (int, error) {
	ev := api.ExecEvent{Stdout: p}
	if s.stderr {
		ev = api.ExecEvent{Stderr: p}
	}
	if err := s.e.send(ev); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) error {
	var req api.ExecRequest
	if err := decode(w, r, maxExecRequest, &req); err != nil {
		return err
	}
	ev := &eventWriter{w: w, rc: http.NewResponseController(w)}
	res, err := s.m.Exec(r.Context(), r.PathValue("id"), req, streamWriter{ev, false}, streamWriter{ev, true})
	if err != nil {
		if !ev.hasStarted() {
			return err
		}
		body := errorBody(err)
		ev.send(api.ExecEvent{Error: &body})
		return err
	}
	return ev.send(api.ExecEvent{Exit: &res})
}

func guestPath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" {
		return "", badRequest("the path parameter is required")
	}
	return p, nil
}

// lazyWriter sends the 200 header with the first byte of a file.
type lazyWriter struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.w.Header().Set("Content-Type", "application/octet-stream")
		l.w.WriteHeader(http.StatusOK)
		l.started = true
	}
	return l.w.Write(p)
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request) error {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	lw := &lazyWriter{w: w}
	if _, err := s.m.ReadFile(r.Context(), r.PathValue("id"), p, lw); err != nil {
		if lw.started {
			return &cutShortError{fmt.Errorf("read %s: %w", p, err)}
		}
		return err
	}
	if !lw.started {
		lw.Write(nil) // an empty file
	}
	return nil
}

func (s *Server) writeFile(w http.ResponseWriter, r *http.Request) error {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var opts daemon.FileOptions
	if v := q.Get("mode"); v != "" {
		mode, err := strconv.ParseUint(v, 8, 32)
		if err != nil {
			return badRequest("mode %q is not octal", v)
		}
		opts.Mode = uint32(mode)
	}
	for name, dst := range map[string]*bool{"append": &opts.Append, "create_dirs": &opts.CreateDirs} {
		if v := q.Get(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return badRequest("%s %q is not a boolean", name, v)
			}
			*dst = b
		}
	}
	n, err := s.m.WriteFile(r.Context(), r.PathValue("id"), p, r.Body, opts)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.WriteFileResponse{Written: n})
}

func (s *Server) expose(w http.ResponseWriter, r *http.Request) error {
	var req api.ExposeRequest
	if err := decode(w, r, maxRequest, &req); err != nil {
		return err
	}
	p, err := s.m.Expose(r.Context(), r.PathValue("id"), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, p)
}

func (s *Server) unexpose(w http.ResponseWriter, r *http.Request) error {
	port, err := strconv.Atoi(r.PathValue("host_port"))
	if err != nil {
		return badRequest("host port %q is not an integer", r.PathValue("host_port"))
	}
	if err := s.m.Unexpose(r.Context(), r.PathValue("id"), port); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
