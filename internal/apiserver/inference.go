package apiserver

// The inference proxy: a call to /v1/inference/P with X-SailboxId: ID
// goes to the upstream's base URL + /P, and box ID sleeps for as long as
// the upstream answers.
//
// The answer is passed on as it arrives, each read from the upstream
// flushed to the client, so a streamed answer (server-sent events, a
// chunked body) reaches the client while the upstream is still writing
// it; the proxy never holds a whole answer. The box sleeps until the
// upstream's answer has ended, or failed, or the client went away (the
// call's context ends, and with it the upstream call), and is then
// resumed once, on a context of its own (daemon.Manager.InferenceCall).
//
// The end of the answer is sent only after that resume: the upstream's
// Content-Length is not passed on, so the answer is chunked and its last
// chunk goes out when the handler returns. A client that reads an answer
// to its end therefore finds the box running. An answer that fails after
// its status went out (the upstream broke off, the client went away, the
// box could not be resumed) is cut short, never ended as if whole.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/sailbox-dev/sailbox/api"
)

// inferencePrefix begins the paths of the inference proxy's routes: the
// only routes InferenceHandler serves.
const inferencePrefix = "/v1/inference/"

// inferenceRead is the most the proxy reads from the upstream before
// passing it on.
const inferenceRead = 32 << 10

// upstreamError is an inference upstream that could not be reached or
// broke off its answer.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "inference upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// hopHeaders are not forwarded by the inference proxy, either way.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", api.SailboxIDHeader,
}

// InferenceHandler serves the inference proxy's routes alone, and 404 for
// every other path: what sailboxd serves on a TCP address for clients
// that take a base URL (-inference-listen), without the box lifecycle
// API, which stays on the Unix socket.
func (s *Server) InferenceHandler() http.Handler { return s.inferenceMux }

// inference proxies a call to the inference upstream for the box named
// by the X-SailboxId header, which sleeps while the upstream answers.
func (s *Server) inference(w http.ResponseWriter, r *http.Request) error {
	id := r.Header.Get(api.SailboxIDHeader)
	if id == "" {
		return badRequest("the %s header is required", api.SailboxIDHeader)
	}
	if s.upstream == nil {
		return fmt.Errorf("inference proxy: %w: the daemon has no upstream configured", errors.ErrUnsupported)
	}
	path, err := inferencePath(r)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInference))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		return badRequest("read body: %v", err)
	}
	target := *s.upstream
	target.Path = strings.TrimSuffix(target.Path, "/") + "/" + path
	target.RawQuery = r.URL.RawQuery
	answering := false
	err = s.m.InferenceCall(r.Context(), id, func(ctx context.Context) error {
		resp, err := s.callUpstream(ctx, r, &target, body)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		answering = true
		return passOn(ctx, w, resp)
	})
	if err != nil && answering {
		return &cutShortError{err}
	}
	return err
}

// callUpstream sends r, with body, to target, without r's hop-by-hop
// headers and X-SailboxId.
func (s *Server) callUpstream(ctx context.Context, r *http.Request, target *url.URL, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, r.Method, target.String(), bytes.NewReader(body))
	if err != nil {
		return nil, &upstreamError{err}
	}
	req.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, &upstreamError{err}
	}
	return resp, nil
}

// passOn sends resp's status, headers (but hop-by-hop ones and its
// Content-Length) and body to w as they arrive, flushing after each read.
// ctx is the call's: when it ends, the client went away.
func passOn(ctx context.Context, w http.ResponseWriter, resp *http.Response) error {
	for k, vs := range resp.Header {
		if !isHop(k) && k != "Content-Length" {
			w.Header()[k] = vs
		}
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	clientGone := func(err error) error {
		return fmt.Errorf("inference answer: the client went away: %w", err)
	}
	if err := rc.Flush(); err != nil {
		return clientGone(err)
	}
	buf := make([]byte, inferenceRead)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return clientGone(err)
			}
			if err := rc.Flush(); err != nil {
				return clientGone(err)
			}
		}
		switch {
		case err == io.EOF:
			return nil
		case err != nil && ctx.Err() != nil:
			return clientGone(err)
		case err != nil:
			return &upstreamError{fmt.Errorf("read answer: %w", err)}
		}
	}
}

// inferencePath is the part of an inference call's path that goes below
// the upstream's base. It is unescaped, so an escaped dot (%2e) or slash
// (%2f) shows here as what the upstream would make of it; a "." or ".."
// segment, which would take the call outside the base, is refused.
func inferencePath(r *http.Request) (string, error) {
	p := r.PathValue("path")
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return "", badRequest("inference path %q has a %q segment", p, seg)
		}
	}
	return p, nil
}

func isHop(h string) bool {
	for _, v := range hopHeaders {
		if strings.EqualFold(v, h) {
			return true
		}
	}
	return false
}
