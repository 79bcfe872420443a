package apiserver

import (
	"net/http"
	"time"
)

// CallObserver hears every lifecycle call the API serves (the routes
// with a call name in the route table: create, checkpoint, fork, pause,
// sleep, resume, connect, upgrade, extend, terminate, exec, read_file,
// write_file, expose, unexpose, inference) when its handler returns: how
// long it took, and the error code it answered with (api.Code*, the
// classification of statusOf), "" if it succeeded. An exec or a file
// call's time includes its streaming; an inference call's, the upstream
// call. It is called from the call's goroutine and must be quick.
type CallObserver func(call string, d time.Duration, code string)

// observed reports h's calls to s.observe.
func (s *Server) observed(call string, h func(http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
	if call == "" || s.observe == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		start := time.Now()
		err := h(w, r)
		code := ""
		if err != nil {
			_, code = statusOf(err)
		}
		s.observe(call, time.Since(start), code)
		return err
	}
}
