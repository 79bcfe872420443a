package guestagent

import (
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"strings"
	"time"
)

// guestSystem makes the system-wide changes of the restored op. The real
// one, linuxGuest, needs root in a guest; tests use a fake that records the
// calls. Methods may be called from several goroutines at once.
type guestSystem interface {
	// addEntropy mixes seed into the kernel's entropy pool, crediting
	// every bit of it, and then has the kernel reseed its CRNG. It reports
	// reseeded false, and no error, if the kernel is too old to reseed on
	// request: the seed is in the pool all the same.
	addEntropy(seed []byte) (reseeded bool, err error)
	// clock reads the wall clock.
	clock() time.Time
	// setClock sets the wall clock to t.
	setClock(t time.Time) error
	// setHostname sets the kernel's hostname, and /etc/hostname if the
	// guest has one.
	setHostname(name string) error
	// setMachineID replaces /etc/machine-id, creating /etc if need be.
	setMachineID(id string) error
	// resetConnections has the kernel reset the TCP connections a restore
	// left dead (those with a peer off the guest: its network on the host
	// is a new one), so that their programs see a reset, not a hang
	// (tcpreset.go). It returns how many it reset.
	resetConnections() (int, error)
}

// system returns what the restored op changes: s.sys if set (tests), the
// guest's own system if s.Guest, and an error otherwise.
func (s *Server) system() (guestSystem, error) {
	switch {
	case s.sys != nil:
		return s.sys, nil
	case !s.Guest:
		return nil, &Error{Code: CodeUnknownOp, Message: "restored: not enabled: the agent does not run as a guest's agent (Server.Guest, sailbox-agent -guest)"}
	}
	sys := defaultGuestSystem()
	if sys == nil {
		return nil, &Error{Code: CodeUnknownOp, Message: "restored: unsupported on " + runtime.GOOS}
	}
	return sys, nil
}

// check validates the arguments of a restored request, before anything is
// changed.
func (a *restoredArgs) check() error {
	bad := func(format string, args ...any) error {
		return &Error{Code: CodeBadRequest, Message: "restored: " + fmt.Sprintf(format, args...)}
	}
	if a.TimeUnixNano <= 0 {
		return bad("time_unix_nano %d is not after 1970", a.TimeUnixNano)
	}
	if n := len(a.Entropy); n < MinRestoredEntropy || n > MaxRestoredEntropy {
		return bad("%d bytes of entropy, want %d to %d", n, MinRestoredEntropy, MaxRestoredEntropy)
	}
	if a.Hostname != "" && !validHostname(a.Hostname) {
		return bad("invalid hostname %q: want 1 to 64 letters, digits, hyphens and dots, not starting with a hyphen or a dot", truncate(a.Hostname, 80))
	}
	if a.MachineID != "" && !validMachineID(a.MachineID) {
		return bad("invalid machine_id %q: want 32 lowercase hexadecimal digits, not all zero", truncate(a.MachineID, 80))
	}
	return nil
}

// restored fixes up a guest that has just been restored or forked: it
// reseeds the kernel's entropy pool, sets the wall clock, gives the
// guest a new hostname and machine ID if asked to, and resets the TCP
// connections its network no longer has. It validates all its
// arguments before it changes anything, then attempts every step even if
// one fails, entropy first: of all of them, a fork must never run without
// it. If a step fails, the error says which steps were applied.
func (s *Server) restored(args *restoredArgs) (*restoredResult, error) {
	if err := args.check(); err != nil {
		return nil, err
	}
	sys, err := s.system()
	if err != nil {
		return nil, err
	}
	var (
		res     restoredResult
		applied []string
		errs    []error
	)
	step := func(name string, err error) {
		if err != nil {
			errs = append(errs, err)
		} else {
			applied = append(applied, name)
		}
	}

	reseeded, err := sys.addEntropy(args.Entropy)
	if err == nil {
		res.EntropyBits, res.Reseeded = 8*len(args.Entropy), reseeded
	}
	step("entropy", err)

	hostTime := time.Unix(0, args.TimeUnixNano)
	before := sys.clock()
	step("clock", sys.setClock(hostTime))
	after := sys.clock()
	res.ClockBeforeUnixNano, res.ClockAfterUnixNano = before.UnixNano(), after.UnixNano()

	if args.Hostname != "" {
		err := sys.setHostname(args.Hostname)
		if err == nil {
			res.Hostname = args.Hostname
		}
		step("hostname", err)
	}
	if args.MachineID != "" {
		err := sys.setMachineID(args.MachineID)
		if err == nil {
			res.MachineID = args.MachineID
		}
		step("machine ID", err)
	}

	reset, err := sys.resetConnections()
	res.ConnectionsReset = reset
	step("connections reset", err)

	s.logger().Info("agent: restored",
		"clock_step", hostTime.Sub(before), "entropy_bits", res.EntropyBits, "reseeded", res.Reseeded,
		"hostname", res.Hostname, "machine_id", res.MachineID, "connections_reset", res.ConnectionsReset, "failed", len(errs))
	if len(errs) > 0 {
		err := errors.Join(errs...)
		code := CodeInternal
		if errors.Is(err, fs.ErrPermission) {
			code = CodePermission
		}
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		done := "nothing"
		if len(applied) > 0 {
			done = strings.Join(applied, ", ")
		}
		return nil, &Error{Code: code, Message: fmt.Sprintf("restored: %s (applied: %s)", strings.Join(msgs, "; "), done)}
	}
	return &res, nil
}
