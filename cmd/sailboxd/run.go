package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/apiserver"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/images"
	"github.com/sailbox-dev/sailbox/internal/imagestore"
	"github.com/sailbox-dev/sailbox/internal/metrics"
	"github.com/sailbox-dev/sailbox/internal/vmmbackend"
	"golang.org/x/sys/unix"
)

// config is the daemon's configuration, from flags.
type config struct {
	StateDir    string
	Socket      string
	SocketGroup string
	VMM         string
	Net         string // sailbox-net, the boxes' networks
	// NetHosts are static names every box's DNS answers (-net-host).
	NetHosts     map[string]netip.Addr
	Kernel       string
	Initrd       string
	Cmdline      string
	Image        string
	ImageDirs    []string
	Limits       daemon.Limits
	MemoryMiB    int
	VCPUs        int
	HostID       string
	Inference    string
	MinSchema    int
	Templates    bool
	CompactAfter int
	LogLevel     slog.Level
	LogFormat    logFormat

	// MetricsListen is the TCP address that serves /metrics (metrics.go);
	// "" serves none.
	MetricsListen string

	// InferenceListen is the TCP address that serves the inference proxy
	// (inference.go); "" serves none. It must be loopback unless
	// InferencePublic.
	InferenceListen string
	InferencePublic bool
}

// newBackend builds the backend; tests replace it with the fake. The real
// one first checks what it needs (preflight.go).
var newBackend = func(c config, log *slog.Logger) (daemon.Backend, error) {
	if err := checkBackend(c, openUsableKVM); err != nil {
		return nil, err
	}
	return vmmbackend.New(vmmbackend.Config{
		VMM: c.VMM, Net: c.Net, NetHosts: c.NetHosts, Kernel: c.Kernel, Initrd: c.Initrd, Cmdline: c.Cmdline,
		Store: filepath.Join(c.StateDir, "store"), RunDir: filepath.Join(c.StateDir, "run"), Logger: log,
	})
}

// defaultStateDir: /var/lib/sailbox for root; $XDG_STATE_HOME/sailbox or
// ~/.local/state/sailbox for others.
func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/sailbox"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "sailbox")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "sailbox")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("sailbox-state-%d", os.Geteuid()))
}

// defaultVMM is sailbox-vmm beside this executable, or on $PATH.
func defaultVMM() string { return defaultBinary("sailbox-vmm") }

// defaultBinary is the program name beside this executable, or beside
// the others (such as the VMM's binary), or on $PATH; else name, which
// the checks at start report as missing.
func defaultBinary(name string, beside ...string) string {
	var dirs []string
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	for _, b := range beside {
		if strings.Contains(b, "/") {
			dirs = append(dirs, filepath.Dir(b))
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
}

// addNetHost adds the -net-host entry NAME=IPV4 to hosts; a name given
// twice must name one address.
func addNetHost(hosts *map[string]netip.Addr, entry string) error {
	name, ip, err := netapi.ParseHost(entry)
	if err != nil {
		return err
	}
	if old, ok := (*hosts)[name]; ok && old != ip {
		return fmt.Errorf("host %s is %s already, not %s", name, old, ip)
	}
	if *hosts == nil {
		*hosts = map[string]netip.Addr{}
	}
	(*hosts)[name] = ip
	return nil
}

func parseArgs(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("sailboxd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	c := config{MemoryMiB: 256, VCPUs: 1}
	fs.StringVar(&c.StateDir, "state-dir", defaultStateDir(), "state `dir`: catalog.db, store/, run/")
	fs.StringVar(&c.Socket, "socket", api.DefaultSocket(), "API socket `path`")
	fs.StringVar(&c.SocketGroup, "socket-group", "", "`group` (name or ID) that may use the socket too (mode 0660)")
	fs.StringVar(&c.VMM, "vmm", defaultVMM(), "sailbox-vmm `binary`")
	fs.StringVar(&c.Net, "sailbox-net", "", "sailbox-net `binary`, which runs each box's network (default: beside sailboxd, beside -vmm, or on $PATH)")
	fs.Func("net-host", "`NAME=IPV4`: every box's DNS answers NAME with that address, before the host's resolver and whatever the box's policy; 192.168.127.254 is the host's 127.0.0.1 (repeatable; connections still obey each box's policy)", func(s string) error {
		return addNetHost(&c.NetHosts, s)
	})
	fs.StringVar(&c.Kernel, "kernel", os.Getenv("SAILBOX_GUEST_KERNEL"), "guest kernel `bzImage` (default $SAILBOX_GUEST_KERNEL)")
	fs.StringVar(&c.Initrd, "initrd", os.Getenv("SAILBOX_GUEST_INITRAMFS"), "initramfs with the guest agent (default $SAILBOX_GUEST_INITRAMFS)")
	fs.StringVar(&c.Cmdline, "cmdline", "", "extra guest kernel command line")
	fs.StringVar(&c.Image, "image", os.Getenv("SAILBOX_DEFAULT_IMAGE"), "default disk `REF` of new boxes: an absolute path (OCI layout directory, docker save .tar, raw ext4 disk, a root file system when <stem>.json lies beside it) or a registry reference (default $SAILBOX_DEFAULT_IMAGE, which `make demo` and `make test` set to the Debian image image/build.sh prints; empty: boxes run on the initramfs alone)")
	fs.Func("image-dir", "`directory` whose regular files clients may name as a box's image (repeatable; none: clients name no image)", func(s string) error {
		c.ImageDirs = append(c.ImageDirs, s)
		return nil
	})
	fs.IntVar(&c.Limits.MaxRunning, "max-running", 0, "most boxes with a VM at once; a create, fork or wake past it answers 507 (0: no limit)")
	fs.IntVar(&c.Limits.MaxMemoryMiB, "max-memory", 0, "most guest memory of running boxes together, MiB (0: no limit)")
	fs.Int64Var(&c.Limits.MinFreeDiskMiB, "min-free-disk", 0, "free space the state directory's file system keeps, MiB: a create, fork or wake that finds less is refused (0: no limit)")
	fs.IntVar(&c.MemoryMiB, "mem", c.MemoryMiB, "default guest memory of new boxes, MiB")
	fs.IntVar(&c.VCPUs, "cpus", c.VCPUs, "default vCPUs of new boxes")
	fs.StringVar(&c.HostID, "host-id", host, "this host's placement ID")
	fs.StringVar(&c.Inference, "inference-upstream", "", "base `URL` that /v1/inference/... is proxied to")
	fs.StringVar(&c.InferenceListen, "inference-listen", "", "TCP `address` that serves the inference proxy (/v1/inference/... alone) besides the socket, for clients that take a base URL: loopback (127.0.0.1:8089) unless -inference-listen-public; empty: none")
	fs.BoolVar(&c.InferencePublic, "inference-listen-public", false, "let -inference-listen bind a non-loopback address (the proxy asks no credentials)")
	fs.IntVar(&c.MinSchema, "min-resumable-schema", 0, "oldest guest schema `version` a box may be resumed on; older boxes are upgraded when they wake (0: any)")
	fs.BoolVar(&c.Templates, "templates", true, "create boxes by restoring a template checkpoint of their image and shape, booted once (false: boot every box)")
	fs.IntVar(&c.CompactAfter, "compact-after", daemon.DefaultCompactAfter, "how many of its own checkpoints a box's chain holds before a pause or sleep merges them into one (0: never)")
	fs.TextVar(&c.LogLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn, error")
	fs.TextVar(&c.LogFormat, "log-format", logText, "log `format`: text or json")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "", "TCP `address` that serves Prometheus metrics on /metrics, bound as given (loopback recommended: 127.0.0.1:9464); empty: none")
	configFile := fs.String("config", "", "configuration `file` of name = value lines, one per flag (config.go); flags given here win")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := applyConfigFile(fs, *configFile); err != nil {
		return c, err
	}
	if c.Net == "" {
		c.Net = defaultBinary("sailbox-net", c.VMM)
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	case c.HostID == "":
		return c, errors.New("no host ID: give -host-id")
	case c.Limits.MaxRunning < 0 || c.Limits.MaxMemoryMiB < 0 || c.Limits.MinFreeDiskMiB < 0:
		return c, errors.New("-max-running, -max-memory and -min-free-disk cannot be negative")
	case c.MinSchema < 0:
		return c, fmt.Errorf("-min-resumable-schema %d is negative", c.MinSchema)
	case c.CompactAfter < 0:
		return c, fmt.Errorf("-compact-after %d is negative (0 never compacts)", c.CompactAfter)
	case c.Image != "" && !filepath.IsAbs(c.Image) && !isRegistryRef(c.Image):
		return c, fmt.Errorf("-image %q is neither an absolute path nor a registry reference with a tag or digest (debian:12)", c.Image)
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseArgs(args, stderr)
	if err != nil {
		return err
	}
	log := newLogger(stderr, c.LogFormat, c.LogLevel)
	var upstream *url.URL
	if c.Inference != "" {
		if upstream, err = url.Parse(c.Inference); err != nil || upstream.Scheme == "" || upstream.Host == "" {
			return fmt.Errorf("-inference-upstream %q is not an absolute URL", c.Inference)
		}
	}
	inferenceListen, err := inferenceAddr(c)
	if err != nil {
		return err
	}
	// Every problem of the configuration at once, before anything serves.
	be, err := preflight(c, log)
	if err != nil {
		return err
	}
	if err := apiserver.MakeSocketDir(c.Socket); err != nil {
		return err
	}
	cat, err := catalog.Open(filepath.Join(c.StateDir, "catalog.db"), nil)
	if err != nil {
		return err
	}
	defer cat.Close()
	var imgs *images.Dirs
	if len(c.ImageDirs) > 0 {
		if imgs, err = images.NewDirs(c.ImageDirs, c.StateDir); err != nil {
			return err
		}
	}
	store, err := imagestore.Open(filepath.Join(c.StateDir, "images"), imagestore.Options{})
	if err != nil {
		return err
	}
	defaults := catalog.Spec{MemoryMiB: c.MemoryMiB, VCPUs: c.VCPUs}
	if c.Image != "" {
		// The operator's image, trusted: resolved (imported if need be)
		// once, at start.
		if defaults.Image, defaults.Root, err = daemon.OperatorImage(ctx, store, c.Image); err != nil {
			return fmt.Errorf("-image: %w", err)
		}
		log.Info("default image", "image", c.Image, "disk", defaults.Image, "root", defaults.Root != nil)
	}
	c.Limits.FreeDiskMiB = func() (int64, error) { return freeDiskMiB(c.StateDir) }
	met := metrics.New()
	m, err := daemon.New(daemon.Config{
		Catalog: cat, Backend: be, HostID: c.HostID, Logger: log, MinResumableSchema: c.MinSchema, Templates: c.Templates, CompactAfter: c.CompactAfter, Images: imgs, Store: store, Limits: c.Limits,
		Defaults: defaults, Observer: met,
	})
	if err != nil {
		return err
	}
	if err := m.Start(ctx); err != nil {
		return err
	}
	defer m.Close()
	stopMetrics, err := serveMetrics(c.MetricsListen, met, m, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	l, err := apiserver.Listen(c.Socket, c.SocketGroup)
	if err != nil {
		return err
	}
	srv := apiserver.New(apiserver.Config{Manager: m, Logger: log, InferenceUpstream: upstream, Observe: met.ObserveCall})
	// The inference listener stops with the socket's, whatever stops it.
	serving, stopServing := context.WithCancel(ctx)
	defer stopServing()
	inferenceDone, err := serveInference(serving, inferenceListen, srv, log)
	if err != nil {
		l.Close()
		return err
	}
	log.Info("sailboxd listening", "socket", c.Socket, "state_dir", c.StateDir, "host_id", c.HostID)
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("telling systemd the daemon is ready", "err", err)
	}
	err = apiserver.Serve(serving, l, srv)
	stopServing()
	err = errors.Join(err, <-inferenceDone)
	log.Info("sailboxd stopped; boxes keep running")
	return err
}

// freeDiskMiB is the space unprivileged users may still use on dir's file
// system, MiB.
func freeDiskMiB(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize >> 20, nil
}

// isRegistryRef reports whether the operator's -image reads as a registry
// reference rather than a relative path: it parses as one and names its
// tag, digest or repository path explicitly ("rel.img" is a path typo).
func isRegistryRef(ref string) bool {
	if strings.HasPrefix(ref, ".") || strings.HasPrefix(ref, "~") || !strings.ContainsAny(ref, ":@/") {
		return false
	}
	_, err := name.ParseReference(ref)
	return err == nil
}
