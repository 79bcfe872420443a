package netapi

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
)

// Launch is how one sailbox-net process starts: the network of one box.
// Whoever starts it builds a Launch and passes Args; sailbox-net parses
// them back with ParseLaunch.
type Launch struct {
	// Socket is the SOCK_SEQPACKET socket sailbox-net listens on (mode
	// 0600) and the VMM connects to.
	Socket string
	// Control is the Unix stream socket of the control API (mode 0600).
	Control string
	// Box is the box's id, named in every log line.
	Box string
	// MAC is the guest's Ethernet address ("" is DefaultGuestMAC).
	MAC string
	// NoInternet refuses every outbound connection that Allow does not
	// name.
	NoInternet bool
	// Allow and Deny are the egress policy's rules (ParseRule). Deny wins
	// over Allow.
	Allow, Deny []string
	// Hosts are static DNS entries: names the box's DNS answers with
	// these addresses.
	Hosts map[string]netip.Addr
}

// Args are sailbox-net's flags for l; ParseLaunch(l.Args()) gives l back.
func (l Launch) Args() []string {
	args := []string{"-socket", l.Socket, "-control", l.Control, "-box", l.Box}
	if l.MAC != "" {
		args = append(args, "-mac", l.MAC)
	}
	if l.NoInternet {
		args = append(args, "-no-internet")
	}
	for _, r := range l.Allow {
		args = append(args, "-allow", r)
	}
	for _, r := range l.Deny {
		args = append(args, "-deny", r)
	}
	for _, name := range slices.Sorted(maps.Keys(l.Hosts)) {
		args = append(args, "-host", name+"="+l.Hosts[name].String())
	}
	return args
}

// Start runs the sailbox-net binary at path with l's flags, in a session
// of its own (so that it outlives its starter, as the box's VMM does),
// with its output (its log) appended to the file log ("" discards it).
// The caller waits for the process (exec.Cmd.Wait).
func (l Launch) Start(path, log string) (*exec.Cmd, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("start sailbox-net: %w", err)
	}
	cmd := exec.Command(path, l.Args()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if log != "" {
		f, err := os.OpenFile(log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("start sailbox-net: log: %w", err)
		}
		defer f.Close() // the child has its own copy
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sailbox-net: %w", err)
	}
	return cmd, nil
}

// ParseLaunch reads sailbox-net's flags and checks them. Usage and flag
// errors go to stderr.
func ParseLaunch(args []string, stderr io.Writer) (Launch, error) {
	fs := flag.NewFlagSet("sailbox-net", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var l Launch
	fs.StringVar(&l.Socket, "socket", "", "listen for the VMM on this SOCK_SEQPACKET Unix socket `path` (one Ethernet frame a message)")
	fs.StringVar(&l.Control, "control", "", "serve the control API (GET /v1/stats, POST /v1/dial?port=N) on this Unix socket `path`")
	fs.StringVar(&l.Box, "box", "", "the box's `id`, named in the log")
	fs.StringVar(&l.MAC, "mac", "", "the guest's Ethernet `address`, which DHCP gives "+GuestIP.String()+" (default "+DefaultGuestMAC+")")
	fs.BoolVar(&l.NoInternet, "no-internet", false, "refuse every outbound connection that -allow does not name")
	fs.Func("allow", "let connections to this `CIDR|address|domain` through, also to host-local addresses (repeatable)", func(v string) error {
		l.Allow = append(l.Allow, v)
		_, err := ParseRule(v)
		return err
	})
	fs.Func("deny", "refuse connections to this `CIDR|address|domain`, whatever -allow says (repeatable)", func(v string) error {
		l.Deny = append(l.Deny, v)
		_, err := ParseRule(v)
		return err
	})
	fs.Func("host", "answer DNS questions for `NAME=IPV4` with that address (repeatable)", func(v string) error {
		name, ip, err := ParseHost(v)
		if err != nil {
			return err
		}
		if l.Hosts == nil {
			l.Hosts = map[string]netip.Addr{}
		}
		l.Hosts[name] = ip
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return l, err
	}
	if fs.NArg() > 0 {
		return l, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return l, l.Validate()
}

// Validate checks l, naming the flag at fault.
func (l Launch) Validate() error {
	switch {
	case l.Socket == "":
		return errors.New("no -socket")
	case l.Control == "":
		return errors.New("no -control")
	case l.Box == "":
		return errors.New("no -box")
	}
	if _, err := ParseMAC(l.MAC); err != nil {
		return fmt.Errorf("-mac: %w", err)
	}
	if _, err := ParseRules(l.Allow); err != nil {
		return fmt.Errorf("-allow: %w", err)
	}
	if _, err := ParseRules(l.Deny); err != nil {
		return fmt.Errorf("-deny: %w", err)
	}
	for name, ip := range l.Hosts {
		if _, _, err := ParseHost(name + "=" + ip.String()); err != nil {
			return fmt.Errorf("-host: %w", err)
		}
	}
	return nil
}

// ParseMAC reads a guest's Ethernet address ("" is DefaultGuestMAC): six
// bytes, unicast. It returns it in the lower-case colon form.
func ParseMAC(s string) (string, error) {
	if s == "" {
		s = DefaultGuestMAC
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("bad MAC address %q", s)
	}
	if hw[0]&1 != 0 {
		return "", fmt.Errorf("MAC address %q is multicast", s)
	}
	if strings.EqualFold(hw.String(), GatewayMAC) {
		return "", fmt.Errorf("MAC address %q is the gateway's", s)
	}
	return hw.String(), nil
}
