package seccomp

import "fmt"

// Mode is what the filter does to a system call that is not on the list.
// It is sailbox-vmm's -seccomp flag (vmmapi.Launch.Seccomp); the zero
// value is Kill.
type Mode string

const (
	// Kill makes the kernel kill the whole VMM at the forbidden call, as
	// if by SIGSYS, before the call runs and with no handler in the way
	// (SECCOMP_RET_KILL_PROCESS). The default.
	Kill Mode = "kill"
	// Trap refuses the call with SIGSYS instead (SECCOMP_RET_TRAP). The
	// Go runtime does not handle it: it prints "SIGSYS: bad system call"
	// and the stack of the goroutine that made the call, whose frames
	// name the syscall wrapper, and exits 2. For finding a call the list
	// lacks.
	Trap Mode = "trap"
	// Off installs no filter.
	Off Mode = "off"
)

// String is the mode as the flag takes it.
func (m Mode) String() string {
	if m == "" {
		return string(Kill)
	}
	return string(m)
}

// Set parses a -seccomp flag value (flag.Value).
func (m *Mode) Set(s string) error {
	v := Mode(s)
	if err := v.Validate(); err != nil {
		return err
	}
	*m = v
	return nil
}

// Validate refuses a mode that is not one of Kill, Trap, Off or "" (Kill).
func (m Mode) Validate() error {
	switch m {
	case "", Kill, Trap, Off:
		return nil
	}
	return fmt.Errorf("unknown seccomp mode %q (want %s, %s or %s)", string(m), Kill, Trap, Off)
}
