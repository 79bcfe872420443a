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
	"slices"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// config is one VM's configuration, from flags or from -config FILE.
type config struct {
	Kernel     string       `json:"kernel,omitempty"`
	Initrd     string       `json:"initrd,omitempty"`
	Cmdline    string       `json:"cmdline,omitempty"`
	MemoryMiB  int          `json:"memory_mib"`
	VCPUs      int          `json:"vcpus"`
	Disks      []diskConfig `json:"disks,omitempty"`
	VsockCID   uint64       `json:"vsock_cid,omitempty"`
	VsockUDS   string       `json:"vsock_uds,omitempty"`
	APISocket  string       `json:"api_socket,omitempty"`
	ConsoleLog string       `json:"console_log,omitempty"`
	Console    bool         `json:"console"`
	// Store is the checkpoint store: where checkpoints go, layered disks'
	// tops live, and restores come from.
	Store string `json:"store,omitempty"`
	// Restore, with Store, restores this checkpoint instead of booting.
	Restore string `json:"restore,omitempty"`
	// ForkName, with Restore, makes the restored guest a fork: it gets a
	// hostname derived from the name and a new machine-id.
	ForkName string `json:"fork_name,omitempty"`
	// DisksFrom, with Store and instead of Disks, boots Kernel on the
	// disks of this checkpoint (memory is not restored): each gets a new
	// top over the checkpoint's layers, in the checkpoint's device order,
	// and the VM's checkpoints continue those layers. This is how a box
	// is upgraded onto a new kernel or guest agent.
	DisksFrom string `json:"disks_from,omitempty"`
}

// diskConfig is one disk: a raw image, or with Layered the read-only base
// of a layered disk whose writes go to a top in the store, which
// checkpoints seal.
type diskConfig struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
	Layered  bool   `json:"layered,omitempty"`
	ID       string `json:"id,omitempty"`
}

// diskFlags collects repeated -disk PATH[,ro|,layered][,id=NAME] flags.
type diskFlags []diskConfig

func (d *diskFlags) String() string { return fmt.Sprint(*d) }
func (d *diskFlags) Set(v string) error {
	parts := strings.Split(v, ",")
	dc := diskConfig{Path: parts[0]}
	if dc.Path == "" {
		return errors.New("empty path")
	}
	for _, opt := range parts[1:] {
		switch {
		case opt == "ro":
			dc.ReadOnly = true
		case opt == "layered":
			dc.Layered = true
		case strings.HasPrefix(opt, "id="):
			dc.ID = strings.TrimPrefix(opt, "id=")
		default:
			return fmt.Errorf("unknown disk option %q (want PATH[,ro|,layered][,id=NAME])", opt)
		}
	}
	if dc.ReadOnly && dc.Layered {
		return errors.New("a disk is either ro or layered")
	}
	*d = append(*d, dc)
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
	var root *snapshot.Root
	if c.Store != "" {
		if root, err = snapshot.OpenRoot(c.Store, nil); err != nil {
			return err
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var m *vmm.Machine
	if c.Restore != "" {
		m, err = vmm.Restore(sys, vmm.RestoreConfig{
			Root:         root,
			ID:           c.Restore,
			VsockUDSPath: c.VsockUDS,
			Logger:       log,
			Serial:       io.MultiWriter(console...),
		})
	} else {
		var disks []vmm.Disk
		if c.DisksFrom != "" {
			disks, err = vmm.CheckpointDisks(root, c.DisksFrom, "boot-"+randomName())
		} else {
			disks, err = openDisks(c, root)
		}
		if err != nil {
			return err
		}
		var vs *vmm.Vsock
		if c.VsockCID != 0 {
			vs = &vmm.Vsock{CID: c.VsockCID, UDSPath: c.VsockUDS}
		}
		m, err = vmm.New(sys, vmm.Config{
			KernelPath: c.Kernel,
			InitrdPath: c.Initrd,
			Cmdline:    c.Cmdline,
			MemoryMiB:  c.MemoryMiB,
			VCPUs:      c.VCPUs,
			Disks:      disks,
			Vsock:      vs,
			Logger:     log,
			Serial:     io.MultiWriter(console...),
		})
		if err != nil {
			// The machine never owned the disks: close them, which
			// deletes their new tops.
			for _, d := range disks {
				if d.Layered != nil {
					d.Layered.Close()
				}
			}
		}
	}
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
		ctl := &controller{m: m, cfg: c, root: root, started: time.Now(), stderr: stderr}
		go vmmapi.Serve(ctx, l, ctl)
	}
	if c.Restore != "" && c.VsockUDS != "" {
		go fixUpRestoredGuest(ctx, c, log)
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
	fs.Var(&disks, "disk", "disk `PATH[,ro|,layered][,id=NAME]`: a raw image, or the base of a layered disk (needs -store); repeat for more (vda, vdb, ...)")
	fs.Uint64Var(&c.VsockCID, "vsock-cid", 0, "guest vsock CID (>= 3); 0: no vsock device")
	fs.StringVar(&c.VsockUDS, "vsock-uds", "", "Unix socket `path` of the vsock device's host side")
	fs.StringVar(&c.APISocket, "api-sock", "", "serve the control API on this Unix socket `path`")
	fs.StringVar(&c.ConsoleLog, "console-log", "", "append the guest console to this `file`")
	fs.BoolVar(&c.Console, "console", c.Console, "copy the guest console to stdout")
	fs.StringVar(&c.Store, "store", "", "checkpoint store `dir` (checkpoints, layered disk tops, restores)")
	fs.StringVar(&c.Restore, "restore", "", "restore checkpoint `ID` from -store instead of booting")
	fs.StringVar(&c.ForkName, "fork-name", "", "with -restore: the guest is a fork named `NAME` (new hostname and machine-id)")
	fs.StringVar(&c.DisksFrom, "disks-from", "", "boot -kernel on the disks of checkpoint `ID` from -store (a fresh boot; memory is not restored) instead of -disk")
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
	layered := slices.ContainsFunc(c.Disks, func(d diskConfig) bool { return d.Layered })
	switch {
	case c.Restore != "" && c.Store == "":
		return c, errors.New("-restore needs -store")
	case c.DisksFrom != "" && c.Restore != "":
		return c, errors.New("-disks-from boots afresh, -restore resumes a checkpoint: give one")
	case c.DisksFrom != "" && c.Store == "":
		return c, errors.New("-disks-from needs -store")
	case c.DisksFrom != "" && len(c.Disks) > 0:
		return c, errors.New("-disks-from takes the disks from the checkpoint: no -disk")
	case c.Restore != "" && (c.Kernel != "" || len(c.Disks) > 0 || c.VsockCID != 0):
		return c, errors.New("-restore takes the machine from the checkpoint: no -kernel, -disk or -vsock-cid")
	case c.ForkName != "" && c.Restore == "":
		return c, errors.New("-fork-name needs -restore")
	case layered && c.Store == "":
		return c, errors.New("a layered disk needs -store (its top lives there)")
	case c.Restore != "":
		return c, nil
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
