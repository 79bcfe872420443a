package vmmapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"

	virtionet "github.com/sailbox-dev/sailbox/devices/virtio/net"
	"github.com/sailbox-dev/sailbox/vmm/seccomp"
)

// Launch is how one sailbox-vmm process starts: boot a kernel (on new
// disks or on a checkpoint's), or restore a checkpoint, possibly as a
// fork. Whoever starts a VMM (the daemon's backend, a test) builds
// a Launch and runs Start; sailbox-vmm parses its flags back with
// ParseLaunch, or reads the same fields from a JSON file (-config).
type Launch struct {
	Kernel     string       `json:"kernel,omitempty"`
	Initrd     string       `json:"initrd,omitempty"`
	Cmdline    string       `json:"cmdline,omitempty"`
	MemoryMiB  int          `json:"memory_mib"`
	VCPUs      int          `json:"vcpus"`
	Disks      []LaunchDisk `json:"disks,omitempty"`
	VsockCID   uint64       `json:"vsock_cid,omitempty"`
	VsockUDS   string       `json:"vsock_uds,omitempty"`
	APISocket  string       `json:"api_socket,omitempty"`
	ConsoleLog string       `json:"console_log,omitempty"`
	Console    bool         `json:"console"`
	// NetSocket is a user-space network's Unix SOCK_SEQPACKET socket, one
	// Ethernet frame per message (gvisor-tap-vsock's "bess" framing):
	// with it the guest has a virtio-net device (eth0) whose frames go
	// there. The VMM connects to it at start and does not start if it
	// cannot; it never binds or listens. A restore of a checkpoint with a
	// network device needs one: a new peer (frames in flight at the
	// checkpoint are lost, as on a reset link).
	NetSocket string `json:"net_socket,omitempty"`
	// NetMAC is the guest's MAC, six colon-separated hexadecimal bytes,
	// unicast; empty means 5a:94:ef:e4:0c:ee (virtio-net's DefaultMAC,
	// which every box may share: each has a network of its own). It is
	// the MAC sailbox-net leases the guest's address to
	// (netapi.DefaultGuestMAC, or its -mac). Not with Restore: the
	// checkpoint's device keeps its MAC.
	NetMAC string `json:"net_mac,omitempty"`
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
	// Seccomp is what the VMM's system-call filter, installed just before
	// the guest runs, does to a call off its list: kill the VMM (""
	// or "kill", the default), trap (SIGSYS with a Go stack trace that
	// names the call, for diagnosis), or nothing ("off": no filter).
	Seccomp seccomp.Mode `json:"seccomp,omitempty"`
	// NoLandlock runs the guest without the VMM's Landlock rules
	// (internal/vmmlandlock), which otherwise leave it only the files
	// this Launch names: for finding out whether a failure is a missing
	// rule. The flag is -landlock=false.
	NoLandlock bool `json:"no_landlock,omitempty"`
	// Log is the file Start appends the process's own output (stdout and
	// stderr: its errors and warnings) to; empty discards it. Not a flag:
	// the starter opens it.
	Log string `json:"log,omitempty"`
}

// LaunchDisk is one disk: a raw image, or with Layered the read-only base
// of a layered disk whose writes go to a top in the store, which
// checkpoints seal.
type LaunchDisk struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
	Layered  bool   `json:"layered,omitempty"`
	// Size is a layered disk's virtual size in bytes, a multiple of
	// DiskSizeAlign and at least its base's size: the guest sees a disk
	// this large, whose blocks past the base's end read as zeros until
	// written (the base is neither copied nor grown). Zero: the base's
	// size. Checkpoints record it; a restore presents the same size.
	Size int64  `json:"size,omitempty"`
	ID   string `json:"id,omitempty"`
}

// DiskSizeAlign is what a disk's Size must be a multiple of: virtio-blk
// counts a disk's capacity in 512-byte sectors.
const DiskSizeAlign = 512

// Defaults of a Launch's flags.
const (
	DefaultMemoryMiB = 256
	DefaultVCPUs     = 1
)

// String is the disk as a -disk flag's value:
// PATH[,ro|,layered[,size=BYTES]][,id=NAME].
func (d LaunchDisk) String() string {
	s := d.Path
	if d.ReadOnly {
		s += ",ro"
	}
	if d.Layered {
		s += ",layered"
	}
	if d.Size != 0 {
		s += ",size=" + strconv.FormatInt(d.Size, 10)
	}
	if d.ID != "" {
		s += ",id=" + d.ID
	}
	return s
}

// parseDisk reads a -disk flag's value.
func parseDisk(v string) (LaunchDisk, error) {
	parts := strings.Split(v, ",")
	d := LaunchDisk{Path: parts[0]}
	if d.Path == "" {
		return d, errors.New("empty path")
	}
	for _, opt := range parts[1:] {
		switch {
		case opt == "ro":
			d.ReadOnly = true
		case opt == "layered":
			d.Layered = true
		case strings.HasPrefix(opt, "id="):
			d.ID = strings.TrimPrefix(opt, "id=")
		case strings.HasPrefix(opt, "size="):
			n, err := strconv.ParseInt(strings.TrimPrefix(opt, "size="), 10, 64)
			if err != nil || n <= 0 {
				return d, fmt.Errorf("disk option %q: want size=BYTES, a positive number of bytes", opt)
			}
			d.Size = n
		default:
			return d, fmt.Errorf("unknown disk option %q (want PATH[,ro|,layered[,size=BYTES]][,id=NAME])", opt)
		}
	}
	return d, d.validate()
}

// validate checks the options of one disk, however they were given.
func (d LaunchDisk) validate() error {
	switch {
	case d.ReadOnly && d.Layered:
		return errors.New("a disk is either ro or layered")
	case d.Size != 0 && !d.Layered:
		return fmt.Errorf("disk %s: only a layered disk has a size of its own (a raw image is served as it is)", d.Path)
	case d.Size < 0 || d.Size%DiskSizeAlign != 0:
		return fmt.Errorf("disk %s: size %d is not a positive multiple of %d bytes", d.Path, d.Size, DiskSizeAlign)
	}
	return nil
}

// Args are sailbox-vmm's flags for l; ParseLaunch(l.Args()) gives l back
// (but Log, which is not a flag).
func (l Launch) Args() []string {
	var args []string
	str := func(name, v string) {
		if v != "" {
			args = append(args, "-"+name, v)
		}
	}
	str("kernel", l.Kernel)
	str("initrd", l.Initrd)
	str("cmdline", l.Cmdline)
	if l.MemoryMiB != DefaultMemoryMiB {
		args = append(args, "-mem", strconv.Itoa(l.MemoryMiB))
	}
	if l.VCPUs != DefaultVCPUs {
		args = append(args, "-cpus", strconv.Itoa(l.VCPUs))
	}
	for _, d := range l.Disks {
		args = append(args, "-disk", d.String())
	}
	if l.VsockCID != 0 {
		args = append(args, "-vsock-cid", strconv.FormatUint(l.VsockCID, 10))
	}
	str("vsock-uds", l.VsockUDS)
	str("net", l.NetSocket)
	str("net-mac", l.NetMAC)
	str("api-sock", l.APISocket)
	str("console-log", l.ConsoleLog)
	if !l.Console {
		args = append(args, "-console=false")
	}
	str("store", l.Store)
	str("restore", l.Restore)
	str("fork-name", l.ForkName)
	str("disks-from", l.DisksFrom)
	str("seccomp", string(l.Seccomp))
	if l.NoLandlock {
		args = append(args, "-landlock=false")
	}
	return args
}

// ParseLaunch reads sailbox-vmm's flags (or the JSON file of -config, which
// is not combined with them) and checks that they describe one launch.
// Usage and flag errors go to stderr.
func ParseLaunch(args []string, stderr io.Writer) (Launch, error) {
	fs := flag.NewFlagSet("sailbox-vmm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	l := Launch{MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Console: true}
	cfgPath := fs.String("config", "", "JSON config `file` with the fields of the flags below (not combined with them)")
	fs.StringVar(&l.Kernel, "kernel", "", "guest kernel bzImage `path`")
	fs.StringVar(&l.Initrd, "initrd", "", "initramfs `path`")
	fs.StringVar(&l.Cmdline, "cmdline", "", "extra kernel command line")
	fs.IntVar(&l.MemoryMiB, "mem", l.MemoryMiB, "guest memory in MiB")
	fs.IntVar(&l.VCPUs, "cpus", l.VCPUs, "vCPUs")
	fs.Func("disk", "disk `PATH[,ro|,layered[,size=BYTES]][,id=NAME]`: a raw image, or the base of a layered disk (needs -store; size: its virtual size, at least the base's, zeros past it); repeat for more (vda, vdb, ...)", func(v string) error {
		d, err := parseDisk(v)
		l.Disks = append(l.Disks, d)
		return err
	})
	fs.Uint64Var(&l.VsockCID, "vsock-cid", 0, "guest vsock CID (>= 3); 0: no vsock device")
	fs.StringVar(&l.VsockUDS, "vsock-uds", "", "Unix socket `path` of the vsock device's host side")
	fs.StringVar(&l.NetSocket, "net", "", "connect a virtio-net device (eth0) to this Unix SOCK_SEQPACKET socket `path` of a user-space network (one Ethernet frame per message); with -restore, the restored device's new peer")
	fs.StringVar(&l.NetMAC, "net-mac", "", "the guest's `MAC` with -net (default 5a:94:ef:e4:0c:ee)")
	fs.StringVar(&l.APISocket, "api-sock", "", "serve the control API on this Unix socket `path`")
	fs.StringVar(&l.ConsoleLog, "console-log", "", "append the guest console to this `file`")
	fs.BoolVar(&l.Console, "console", l.Console, "copy the guest console to stdout")
	fs.StringVar(&l.Store, "store", "", "checkpoint store `dir` (checkpoints, layered disk tops, restores)")
	fs.StringVar(&l.Restore, "restore", "", "restore checkpoint `ID` from -store instead of booting")
	fs.StringVar(&l.ForkName, "fork-name", "", "with -restore: the guest is a fork named `NAME` (new hostname and machine-id)")
	fs.StringVar(&l.DisksFrom, "disks-from", "", "boot -kernel on the disks of checkpoint `ID` from -store (a fresh boot; memory is not restored) instead of -disk")
	fs.Var(&l.Seccomp, "seccomp", "what the system-call filter does to a call off its list: `kill` the VMM (the default), trap (SIGSYS and a stack trace naming the call) or off (no filter)")
	landlock := fs.Bool("landlock", true, "confine the VMM's files to those named here with Landlock, before the guest runs")
	if err := fs.Parse(args); err != nil {
		return l, err
	}
	l.NoLandlock = !*landlock
	if fs.NArg() > 0 {
		return l, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *cfgPath != "" {
		others := 0
		fs.Visit(func(f *flag.Flag) {
			if f.Name != "config" {
				others++
			}
		})
		if others > 0 {
			return l, errors.New("-config cannot be combined with other flags")
		}
		b, err := os.ReadFile(*cfgPath)
		if err != nil {
			return l, fmt.Errorf("config: %w", err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			return l, fmt.Errorf("config %s: %w", *cfgPath, err)
		}
		if l.Log != "" {
			return l, fmt.Errorf("config %s: \"log\" is where a starter sends the VMM's output, not a setting of the VMM", *cfgPath)
		}
	}
	return l, l.Validate()
}

// Validate checks that l describes one launch, naming the flags at fault.
func (l Launch) Validate() error {
	if err := l.Seccomp.Validate(); err != nil {
		return fmt.Errorf("-seccomp: %w", err)
	}
	for _, d := range l.Disks {
		if err := d.validate(); err != nil {
			return fmt.Errorf("-disk: %w", err)
		}
	}
	if l.NetMAC != "" {
		if l.NetSocket == "" {
			return errors.New("-net-mac needs -net")
		}
		if _, err := virtionet.ParseMAC(l.NetMAC); err != nil {
			return fmt.Errorf("-net-mac: %w", err)
		}
	}
	layered := slices.ContainsFunc(l.Disks, func(d LaunchDisk) bool { return d.Layered })
	switch {
	case l.Restore != "" && l.Store == "":
		return errors.New("-restore needs -store")
	case l.DisksFrom != "" && l.Restore != "":
		return errors.New("-disks-from boots afresh, -restore resumes a checkpoint: give one")
	case l.DisksFrom != "" && l.Store == "":
		return errors.New("-disks-from needs -store")
	case l.DisksFrom != "" && len(l.Disks) > 0:
		return errors.New("-disks-from takes the disks from the checkpoint: no -disk")
	case l.Restore != "" && (l.Kernel != "" || len(l.Disks) > 0 || l.VsockCID != 0 || l.NetMAC != ""):
		return errors.New("-restore takes the machine from the checkpoint: no -kernel, -disk, -vsock-cid or -net-mac")
	case l.ForkName != "" && l.Restore == "":
		return errors.New("-fork-name needs -restore")
	case layered && l.Store == "":
		return errors.New("a layered disk needs -store (its top lives there)")
	case l.Restore != "":
		return nil
	case l.Kernel == "":
		return errors.New("no kernel: give -kernel or \"kernel\" in -config")
	case (l.VsockCID == 0) != (l.VsockUDS == ""):
		return errors.New("-vsock-cid and -vsock-uds go together")
	case l.VsockCID != 0 && l.VsockCID < 3:
		return fmt.Errorf("vsock CID %d is reserved; use 3 or more", l.VsockCID)
	}
	return nil
}

// Start runs the sailbox-vmm binary at path with l's flags, in a session
// of its own (it outlives its starter), its output appended to l.Log.
// The caller waits for it.
func (l Launch) Start(path string) (*exec.Cmd, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("start sailbox-vmm: %w", err)
	}
	cmd := exec.Command(path, l.Args()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if l.Log != "" {
		f, err := os.OpenFile(l.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("start sailbox-vmm: log: %w", err)
		}
		defer f.Close() // the child has its own copy
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sailbox-vmm: %w", err)
	}
	return cmd, nil
}
