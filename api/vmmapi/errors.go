package vmmapi

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinels a Controller wraps to choose its answer's status (the VMM's
// own sentinels are mapped too, see statusOf), and that the client's
// *Error matches by status.
var (
	// ErrConflict: the VM's state does not allow the call (409).
	ErrConflict = errors.New("the VM's state does not allow the call")
	// ErrBadRequest: the request cannot be served as asked (400).
	ErrBadRequest = errors.New("bad request")
	// ErrNoSpace: the host's disk is full (507; syscall.ENOSPC maps to
	// it too).
	ErrNoSpace = errors.New("no space left on the host")
)

// Error is a VMM's refusal of a call, as the client returns it.
type Error struct {
	Op      string // "POST /pause"
	Status  int    // the HTTP status
	Message string // the VMM's message
}

func (e *Error) Error() string {
	return fmt.Sprintf("vmm api %s: %s (%d)", e.Op, e.Message, e.Status)
}

// Is matches ErrConflict to a 409, ErrBadRequest to a 400 and
// ErrNoSpace to a 507.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNoSpace:
		return e.Status == http.StatusInsufficientStorage
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrBadRequest:
		return e.Status == http.StatusBadRequest
	}
	return false
}
