//go:build !linux

package guestagent

import (
	"context"
	"runtime"
)

// exec fails on systems other than Linux: the agent runs in a Linux guest.
// It exists so that the package builds everywhere.
func (s *Server) exec(ctx context.Context, x *exchange, args *execArgs) (*ExecResult, error) {
	return nil, &Error{Code: CodeUnknownOp, Message: "exec is not implemented on " + runtime.GOOS}
}
