package seccomp

import (
	"fmt"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// filters are the BPF programs that make up the filter for mode, in the
// order they must be loaded: one per argument rule, then the allow-list.
// Each program answers every call; the kernel runs them all and takes the
// harshest answer. The allow-list goes last: it does not allow seccomp(2),
// so nothing could be loaded after it. Only the first sets no_new_privs
// (the library does it with prctl, which the prctl rule then refuses).
//
// Why one program per argument rule: go-seccomp-bpf v1.6.0's argument
// conditions load the argument into BPF's accumulator and, when they fail,
// go on to compare that argument, not the call's number, with the next
// call of the program: a caller could pick an argument equal to another
// call's number and be judged by that call's rule. A rule is sound only
// as the one call of its program, its conditions (each its own
// alternative, each reloading the argument) followed by nothing but the
// default answer; so each is, here.
func filters(mode Mode, pid int) ([]seccompbpf.Filter, error) {
	refuse, err := mode.action()
	if err != nil {
		return nil, err
	}
	var out []seccompbpf.Filter
	for i, r := range argRules {
		var when []seccompbpf.NameWithConditions
		for _, c := range r.refuse {
			if r.againstPID {
				c.Value = uint64(pid)
			}
			when = append(when, seccompbpf.NameWithConditions{Name: r.call, Conditions: seccompbpf.ArgumentConditions{c}})
		}
		out = append(out, filter(seccompbpf.Policy{
			DefaultAction: seccompbpf.ActionAllow,
			Syscalls:      []seccompbpf.SyscallGroup{{Action: refuse, NamesWithCondtions: when}},
		}, i == 0))
	}
	var names []string
	for _, g := range allowed {
		names = append(names, g.calls...)
	}
	out = append(out, filter(seccompbpf.Policy{
		DefaultAction: refuse,
		Syscalls: []seccompbpf.SyscallGroup{
			{Action: seccompbpf.ActionAllow, Names: names},
			{Action: seccompbpf.ActionErrno | seccompbpf.Action(unix.ENOSYS), Names: unsupported},
		},
	}, len(out) == 0))
	// Assemble now, so that a name the library does not know is an error
	// here rather than when loading.
	for i := range out {
		if _, err := out[i].Policy.Assemble(); err != nil {
			return nil, fmt.Errorf("seccomp: filter %d: %w", i, err)
		}
	}
	return out, nil
}

// filter is p installed on every thread (TSYNC), setting no_new_privs
// first if nnp (TSYNC copies it to every thread). no_new_privs lets an
// unprivileged process install filters, and a filter wants it anyway: no
// exec could gain privileges the filter did not foresee.
func filter(p seccompbpf.Policy, nnp bool) seccompbpf.Filter {
	return seccompbpf.Filter{NoNewPrivs: nnp, Flag: seccompbpf.FilterFlagTSync, Policy: p}
}

// action is the kernel's answer to a forbidden call in mode m.
func (m Mode) action() (seccompbpf.Action, error) {
	switch m {
	case "", Kill:
		return seccompbpf.ActionKillProcess, nil
	case Trap:
		return seccompbpf.ActionTrap, nil
	case Off:
		return 0, fmt.Errorf("seccomp: mode %s has no filter", m)
	}
	return 0, m.Validate()
}
