package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// config is one VM's configuration, from flags or from -config FILE.
type config struct {
	Kernel     string     `json:"kernel"`
	Initrd     string     `json:"initrd,omitempty"`
	Cmdline    string     `json:"cmdline,omitempty"`
	MemoryMiB  int        `json:"memory_mib"`
	VCPUs      int        `json:"vcpus"`
	Disks      []vmm.Disk `json:"disks,omitempty"`
	VsockCID   uint64     `json:"vsock_cid,omitempty"`
	VsockUDS   string     `json:"vsock_uds,omitempty"`
	APISocket  string     `json:"api_socket,omitempty"`
	ConsoleLog string     `json:"console_log,omitempty"`
	Console    bool       `json:"console"`
}

// diskFlags collects repeated -disk PATH[,ro] flags.
type diskFlags []vmm.Disk

func (d *diskFlags) String() string { return fmt.Sprint(*d) }
func (d *diskFlags) Set(v string) error {
	path, opt, _ := strings.Cut(v, ",")
	switch {
	case path == "":
		return errors.New("empty path")
	case opt != "" && opt != "ro":
		return fmt.Errorf("unknown disk option %q (want PATH or PATH,ro)", opt)
	}
	*d = append(*d, vmm.Disk{Path: path, ReadOnly: opt == "ro"})
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseArgs(args, stderr)
	if err != nil {
		return err
	}

	var console []io.Writer
	if c.Console {
		console = append(console, stdout)
	}
	if c.ConsoleLog != "" {
		f, err := os.OpenFile(c.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("console log: %w", err)
		}
		defer f.Close()
		console = append(console, f)
	}

	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	defer sys.Close()
	var vs *vmm.Vsock
	if c.VsockCID != 0 {
		vs = &vmm.Vsock{CID: c.VsockCID, UDSPath: c.VsockUDS}
	}
	m, err := vmm.New(sys, vmm.Config{
		KernelPath: c.Kernel,
		InitrdPath: c.Initrd,
		Cmdline:    c.Cmdline,
		MemoryMiB:  c.MemoryMiB,
		VCPUs:      c.VCPUs,
		Disks:      c.Disks,
		Vsock:      vs,
		Logger:     slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Serial:     io.MultiWriter(console...),
	})
	if err != nil {
		return err
	}
	defer m.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.APISocket != "" {
		l, err := listenUnix(c.APISocket)
		if err != nil {
			return err
		}
		defer os.Remove(c.APISocket)
		ctl := &controller{m: m, cfg: c, started: time.Now()}
		go vmmapi.Serve(ctx, l, ctl)
	}

	exit, err := m.Run(ctx)
	if err != nil {
		return fmt.Errorf("vm stopped (%v): %w", exit, err)
	}
	fmt.Fprintf(stderr, "sailbox-vmm: guest %v\n", exit)
	return nil
}

func parseArgs(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("sailbox-vmm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := config{MemoryMiB: 256, VCPUs: 1, Console: true}
	var disks diskFlags
	cfgPath := fs.String("config", "", "JSON config `file` with the fields of the flags below (not combined with them)")
	fs.StringVar(&c.Kernel, "kernel", "", "guest kernel bzImage `path`")
	fs.StringVar(&c.Initrd, "initrd", "", "initramfs `path`")
	fs.StringVar(&c.Cmdline, "cmdline", "", "extra kernel command line")
	fs.IntVar(&c.MemoryMiB, "mem", c.MemoryMiB, "guest memory in MiB")
	fs.IntVar(&c.VCPUs, "cpus", c.VCPUs, "vCPUs")
	fs.Var(&disks, "disk", "raw disk image `PATH[,ro]`; repeat for more (vda, vdb, ...)")
	fs.Uint64Var(&c.VsockCID, "vsock-cid", 0, "guest vsock CID (>= 3); 0: no vsock device")
	fs.StringVar(&c.VsockUDS, "vsock-uds", "", "Unix socket `path` of the vsock device's host side")
	fs.StringVar(&c.APISocket, "api-sock", "", "serve the control API on this Unix socket `path`")
	fs.StringVar(&c.ConsoleLog, "console-log", "", "append the guest console to this `file`")
	fs.BoolVar(&c.Console, "console", c.Console, "copy the guest console to stdout")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.Disks = disks
	if *cfgPath != "" {
		others := 0
		fs.Visit(func(f *flag.Flag) {
			if f.Name != "config" {
				others++
			}
		})
		if others > 0 {
			return c, errors.New("-config cannot be combined with other flags")
		}
		b, err := os.ReadFile(*cfgPath)
		if err != nil {
			return c, fmt.Errorf("config: %w", err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("config %s: %w", *cfgPath, err)
		}
	}
	switch {
	case c.Kernel == "":
		return c, errors.New("no kernel: give -kernel or \"kernel\" in -config")
	case (c.VsockCID == 0) != (c.VsockUDS == ""):
		return c, errors.New("-vsock-cid and -vsock-uds go together")
	case c.VsockCID != 0 && c.VsockCID < 3:
		return c, fmt.Errorf("vsock CID %d is reserved; use 3 or more", c.VsockCID)
	}
	return c, nil
}

// listenUnix listens on path, replacing a stale socket file but never any
// other kind of file.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api socket %s exists and is not a socket", path)
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	return l, nil
}

// controller serves the control API for the running machine.
type controller struct {
	m       *vmm.Machine
	cfg     config
	started time.Time
}

func (c *controller) Status() vmmapi.Status {
	return vmmapi.Status{State: "running", VCPUs: c.cfg.VCPUs, MemoryMiB: c.cfg.MemoryMiB, StartedAt: c.started.UTC(), PID: os.Getpid()}
}

func (c *controller) Shutdown() { c.m.Stop() }
