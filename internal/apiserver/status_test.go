package apiserver

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// Every error kind the daemon reports answers its own status and code,
// however deeply wrapped.
func TestStatusOf(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{daemon.ErrInvalidArgument, http.StatusBadRequest, api.CodeBadRequest},
		{daemon.ErrNotFound, http.StatusNotFound, api.CodeNotFound},
		{lifecycle.ErrInvalidTransition, http.StatusConflict, api.CodeInvalidTransition},
		{daemon.ErrConflict, http.StatusConflict, api.CodeConflict},
		{daemon.ErrWrongHost, http.StatusMisdirectedRequest, api.CodeWrongHost},
		{daemon.ErrCapacity, http.StatusInsufficientStorage, api.CodeCapacity},
		{errors.ErrUnsupported, http.StatusNotImplemented, api.CodeUnsupported},
		{errors.New("boom"), http.StatusInternalServerError, api.CodeInternal},
	} {
		err := fmt.Errorf("box sb-1: fork: %w", c.err)
		if status, code := statusOf(err); status != c.status || code != c.code {
			t.Errorf("statusOf(%v) = %d %s, want %d %s", err, status, code, c.status, c.code)
		}
	}
}
