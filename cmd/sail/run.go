package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
)

// errUsage reports a command line sail cannot run; the message has been
// printed.
var errUsage = errors.New("usage")

// exitCode is an exec'd command's non-zero exit code, which sail exits
// with.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// cli is one invocation's context.
type cli struct {
	c      *client.Client
	stdout io.Writer
	stderr io.Writer
	json   bool
}

type command struct {
	args  string // usage after the command name
	help  string
	run   func(ctx context.Context, s *cli, fs *flag.FlagSet, args []string) error
	flags func(fs *flag.FlagSet) // command flags, before parsing
	nargs int                    // exact number of arguments; -1: at least one
}

var commands map[string]*command

func init() {
	commands = map[string]*command{
		"create":      {args: "[-mem MiB] [-cpus N] [-image REF] [-disk-size SIZE] [-no-internet] [-allow RULE]... [-deny RULE]... [-no-network] [-label KEY=VALUE]... [-idle-timeout D] [-ttl D]", help: "create a new box (restored from its template checkpoint), with a network of its own unless -no-network", nargs: 0, flags: createFlags, run: runCreate},
		"ls":          {args: "[-max-schema N] [-label KEY=VALUE]...", help: "list boxes (-max-schema: those whose agent needs an upgrade; -label: those carrying every label given)", nargs: 0, flags: lsFlags, run: runList},
		"extend":      {args: "ID DURATION", help: "set the box's expiry to DURATION (1h, 30m) from now", nargs: 2, run: runExtend},
		"get":         {args: "ID", help: "show a box", nargs: 1, run: boxCall((*client.Client).Get)},
		"checkpoint":  {args: "ID", help: "checkpoint a running box; it keeps running", nargs: 1, run: runCheckpoint},
		"checkpoints": {args: "ID", help: "list a box's checkpoint chain, newest first", nargs: 1, run: runCheckpoints},
		"fork":        {args: "[-count N] ID", help: "start new boxes from one checkpoint of this one (all or none)", nargs: 1, flags: forkFlags, run: runFork},
		"pause":       {args: "ID", help: "checkpoint and power down until resume", nargs: 1, run: boxCall((*client.Client).Pause)},
		"sleep":       {args: "ID", help: "checkpoint and power down until used", nargs: 1, run: boxCall((*client.Client).Sleep)},
		"resume":      {args: "ID", help: "restore a paused or sleeping box", nargs: 1, run: boxCall((*client.Client).Resume)},
		"connect":     {args: "ID", help: "check placement, resume if down, show the box", nargs: 1, run: boxCall((*client.Client).Connect)},
		"upgrade":     {args: "ID", help: "move the box onto the current guest agent", nargs: 1, run: runUpgrade},
		"rm":          {args: "ID", help: "terminate a box", nargs: 1, run: runTerminate},
		"exec":        {args: "[-e KEY=VALUE]... [-w DIR] [-user USER] [-timeout D] [-stdin FILE] ID [COMMAND [ARG]...]", help: "run a command in the box (wakes a sleeping box); without one, the image's Entrypoint and Cmd", nargs: -1, flags: execFlags, run: runExec},
		"cat":         {args: "ID PATH", help: "print a file of the box", nargs: 2, run: runCat},
		"put":         {args: "[-mode 644] [-append] [-mkdir] ID PATH LOCAL-FILE", help: "write a local file into the box", nargs: 3, flags: putFlags, run: runPut},
		"expose":      {args: "[-addr IP] ID [HOST-PORT:]GUEST-PORT", help: "forward a host TCP port to the box (a connection wakes it)", nargs: 2, flags: exposeFlags, run: runExpose},
		"unexpose":    {args: "ID HOST-PORT", help: "remove a port forward", nargs: 2, run: runUnexpose},
		"net":         {args: "ID", help: "show the counters of the box's network (since its VM last started)", nargs: 1, run: runNet},
	}
	commands["terminate"] = commands["rm"]
	commands["list"] = commands["ls"]
}

// aliases are commands' other names, left out of the usage.
var aliases = map[string]bool{"terminate": true, "list": true}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: sail [-socket PATH] [--json] COMMAND [ARGS]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		if !aliases[n] {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, n := range names {
		fmt.Fprintf(tw, "  %s\t%s\n", n, commands[n].help)
	}
	tw.Flush()
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { usage(stderr) }
	socket := fs.String("socket", api.DefaultSocket(), "the daemon's socket `path`")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() == 0 {
		usage(stderr)
		return errUsage
	}
	name := fs.Arg(0)
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "sail: unknown command %q\n", name)
		usage(stderr)
		return errUsage
	}
	cfs := flag.NewFlagSet("sail "+name, flag.ContinueOnError)
	cfs.SetOutput(stderr)
	cfs.BoolVar(asJSON, "json", *asJSON, "print JSON instead of text")
	cfs.Usage = func() {
		fmt.Fprintf(stderr, "usage: sail %s %s\n  %s\n", name, cmd.args, cmd.help)
		cfs.PrintDefaults()
	}
	if cmd.flags != nil {
		cmd.flags(cfs)
	}
	if err := cfs.Parse(fs.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	rest := cfs.Args()
	if n := cmd.nargs; (n >= 0 && len(rest) != n) || (n < 0 && len(rest) < 1) {
		cfs.Usage()
		return errUsage
	}
	s := &cli{c: client.New(*socket), stdout: stdout, stderr: stderr, json: *asJSON}
	return explainDial(*socket, cmd.run(ctx, s, cfs, rest))
}

// print writes v as JSON, or human as text.
func (s *cli) print(v any, human func(w io.Writer)) error {
	if s.json {
		enc := json.NewEncoder(s.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(s.stdout)
	return nil
}

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printBox(w io.Writer, b api.Box) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\n", b.ID)
	fmt.Fprintf(tw, "state\t%s\n", b.State)
	fmt.Fprintf(tw, "guest schema\t%d", b.GuestSchemaVersion)
	if b.PendingUpgrade {
		fmt.Fprint(tw, " (upgrade pending)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "created\t%s\n", fmtTime(&b.Created))
	fmt.Fprintf(tw, "last checkpoint\t%s", fmtTime(b.LastCheckpoint))
	if b.LastCheckpointID != "" {
		fmt.Fprintf(tw, " (%s)", b.LastCheckpointID)
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "parent\t%s\n", dash(b.ParentID))
	fmt.Fprintf(tw, "host\t%s\n", b.HostID)
	fmt.Fprintf(tw, "size\t%d MiB, %d vCPU\n", b.MemoryMiB, b.VCPUs)
	if b.DiskSizeBytes != 0 {
		fmt.Fprintf(tw, "disk\t%d MiB\n", b.DiskSizeBytes>>20)
	}
	for _, p := range b.Ports {
		fmt.Fprintf(tw, "port\t%s → guest %d\n", p.HostAddr, p.GuestPort)
	}
	fmt.Fprintf(tw, "network\t%s\n", fmtNetwork(b.Network))
	if len(b.Labels) > 0 {
		fmt.Fprintf(tw, "labels\t%s\n", fmtLabels(b.Labels))
	}
	if b.IdleTimeoutSeconds > 0 {
		fmt.Fprintf(tw, "idle timeout\t%s\n", time.Duration(b.IdleTimeoutSeconds)*time.Second)
	}
	if b.ExpiresAt != nil {
		fmt.Fprintf(tw, "expires\t%s (ttl %s)\n", fmtTime(b.ExpiresAt), time.Duration(b.TTLSeconds)*time.Second)
	}
	tw.Flush()
}

// fmtLabels is a box's labels in one line, sorted: k=v k=v.
func fmtLabels(labels map[string]string) string {
	var kvs []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		kvs = append(kvs, k+"="+labels[k])
	}
	return strings.Join(kvs, " ")
}

// fmtNetwork is a box's network policy in one line.
func fmtNetwork(p *api.NetworkPolicy) string {
	if p == nil {
		return "none"
	}
	s := "internet"
	if p.NoInternet {
		s = "no internet"
	}
	if len(p.Allow) > 0 {
		s += ", allow " + strings.Join(p.Allow, " ")
	}
	if len(p.Deny) > 0 {
		s += ", deny " + strings.Join(p.Deny, " ")
	}
	return s
}

func createFlags(fs *flag.FlagSet) {
	fs.Int("mem", 0, "guest memory in MiB (0: the daemon's default)")
	fs.Int("cpus", 0, "vCPUs (0: the daemon's default)")
	fs.String("image", "", "the box's disk, `REF`: an OCI layout directory, a docker save tarball (.tar) or a raw disk inside the daemon's image directories, or a registry reference")
	fs.Var(new(byteSize), "disk-size", "the box's disk, `SIZE` in bytes or with a suffix K, M, G or T (2G: 2 GiB): at least the image's size; the guest grows its root file system to it over the shared image (default: the image's size)")
	fs.Bool("no-network", false, "give the box no network (exposed ports then reach its 127.0.0.1 through the agent)")
	fs.Bool("no-internet", false, "refuse every outbound connection that -allow does not name")
	fs.Var(new(stringList), "allow", "let connections to this `RULE` through, even to the host (192.168.127.254 is the host's 127.0.0.1): a CIDR block, an address or a domain covering its subdomains (repeatable)")
	fs.Var(new(stringList), "deny", "refuse connections to this `RULE`, whatever -allow says (repeatable)")
	fs.Var(labelFlags{}, "label", "label the box `KEY=VALUE` (repeatable; ls -label filters on it)")
	fs.Duration("idle-timeout", 0, "put the box to sleep once it has run this long unused: no exec, file call or exposed-port connection (0: never)")
	fs.Duration("ttl", 0, "terminate the box this long after its creation unless extended (0: never)")
}

// labelFlags collects repeated -label KEY=VALUE.
type labelFlags map[string]string

func (l labelFlags) String() string { return fmtLabels(l) }

func (l labelFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	l[k] = val
	return nil
}

// seconds is d in whole seconds, for a policy flag named name: 0 stays
// 0, anything else must be at least a second.
func seconds(name string, d time.Duration) (int64, error) {
	if d != 0 && d < time.Second {
		return 0, fmt.Errorf("-%s %s: at least a second, or 0", name, d)
	}
	return int64(d / time.Second), nil
}

func durationFlag(fs *flag.FlagSet, name string) (int64, error) {
	d, _ := time.ParseDuration(fs.Lookup(name).Value.String())
	return seconds(name, d)
}

// stringList is a repeatable flag's values.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func intFlag(fs *flag.FlagSet, name string) int {
	v, _ := strconv.Atoi(fs.Lookup(name).Value.String())
	return v
}

func runCreate(ctx context.Context, s *cli, fs *flag.FlagSet, args []string) error {
	idle, err := durationFlag(fs, "idle-timeout")
	if err != nil {
		return err
	}
	ttl, err := durationFlag(fs, "ttl")
	if err != nil {
		return err
	}
	b, err := s.c.Create(ctx, api.CreateRequest{
		MemoryMiB: intFlag(fs, "mem"), VCPUs: intFlag(fs, "cpus"), Image: fs.Lookup("image").Value.String(),
		DiskSizeBytes:      int64(*fs.Lookup("disk-size").Value.(*byteSize)),
		NoNetwork:          fs.Lookup("no-network").Value.String() == "true",
		NoInternet:         fs.Lookup("no-internet").Value.String() == "true",
		Allow:              *fs.Lookup("allow").Value.(*stringList),
		Deny:               *fs.Lookup("deny").Value.(*stringList),
		Labels:             fs.Lookup("label").Value.(labelFlags),
		IdleTimeoutSeconds: idle,
		TTLSeconds:         ttl,
	})
	if err != nil {
		return err
	}
	return s.print(b, func(w io.Writer) { fmt.Fprintln(w, b.ID) })
}

func lsFlags(fs *flag.FlagSet) {
	fs.Int("max-schema", -1, "only boxes whose guest agent reports at most this schema version")
	fs.Var(labelFlags{}, "label", "only boxes labelled `KEY=VALUE` (repeatable: every one)")
}

func runList(ctx context.Context, s *cli, fs *flag.FlagSet, args []string) error {
	var opts client.ListOptions
	if n := intFlag(fs, "max-schema"); n >= 0 {
		opts.MaxGuestSchemaVersion = &n
	}
	opts.Labels = fs.Lookup("label").Value.(labelFlags)
	boxes, err := s.c.List(ctx, opts)
	if err != nil {
		return err
	}
	return s.print(api.BoxList{Boxes: boxes}, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tSCHEMA\tCREATED\tLAST CHECKPOINT\tPARENT\tHOST")
		for _, b := range boxes {
			schema := strconv.Itoa(b.GuestSchemaVersion)
			if b.PendingUpgrade {
				schema += "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.State, schema, fmtTime(&b.Created), fmtTime(b.LastCheckpoint), dash(b.ParentID), b.HostID)
		}
		tw.Flush()
	})
}

// boxCall runs a call that answers a box.
func boxCall(call func(*client.Client, context.Context, string) (api.Box, error)) func(context.Context, *cli, *flag.FlagSet, []string) error {
	return func(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
		b, err := call(s.c, ctx, args[0])
		if err != nil {
			return err
		}
		return s.print(b, func(w io.Writer) { printBox(w, b) })
	}
}

func runCheckpoint(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
	ck, err := s.c.Checkpoint(ctx, args[0])
	if err != nil {
		return err
	}
	return s.print(ck, func(w io.Writer) { fmt.Fprintln(w, ck.ID) })
}

func runCheckpoints(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
	cks, err := s.c.Checkpoints(ctx, args[0])
	if err != nil {
		return err
	}
	return s.print(api.CheckpointList{Checkpoints: cks}, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tBOX\tPARENT\tCREATED")
		for _, c := range cks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.ID, c.BoxID, dash(c.ParentID), fmtTime(&c.Created))
		}
		tw.Flush()
	})
}

func forkFlags(fs *flag.FlagSet) {
	fs.Int("count", 1, "how many children, all from one checkpoint, started concurrently")
}

func runFork(ctx context.Context, s *cli, fs *flag.FlagSet, args []string) error {
	res, err := s.c.ForkN(ctx, args[0], intFlag(fs, "count"))
	if err != nil {
		return err
	}
	return s.print(res, func(w io.Writer) {
		for _, b := range res.Boxes {
			fmt.Fprintln(w, b.ID)
		}
	})
}

func runExtend(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
	d, err := time.ParseDuration(args[1])
	if err != nil {
		return fmt.Errorf("%q is not a duration (1h, 30m)", args[1])
	}
	if d < time.Second {
		return fmt.Errorf("extend by %s: at least a second", d)
	}
	b, err := s.c.Extend(ctx, args[0], d)
	if err != nil {
		return err
	}
	return s.print(b, func(w io.Writer) { fmt.Fprintf(w, "%s expires at %s\n", b.ID, fmtTime(b.ExpiresAt)) })
}

func runUpgrade(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
	res, err := s.c.Upgrade(ctx, args[0])
	if err != nil {
		return err
	}
	return s.print(res, func(w io.Writer) {
		if res.Upgraded {
			fmt.Fprintf(w, "%s runs guest schema %d\n", res.Box.ID, res.Box.GuestSchemaVersion)
		} else {
			fmt.Fprintf(w, "%s is %s: upgrade recorded, applied when it next wakes\n", res.Box.ID, res.Box.State)
		}
	})
}

func runTerminate(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
	res, err := s.c.Terminate(ctx, args[0])
	if err != nil {
		return err
	}
	return s.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "%s terminated; %d checkpoints freed\n", res.ID, len(res.FreedCheckpoints))
	})
}

// envFlags collects repeated -e KEY=VALUE.
type envFlags []string

func (e *envFlags) String() string { return strings.Join(*e, " ") }
func (e *envFlags) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	*e = append(*e, v)
	return nil
}

func execFlags(fs *flag.FlagSet) {
	fs.Var(&envFlags{}, "e", "set an environment variable, `KEY=VALUE` (repeatable)")
	fs.String("w", "", "working `directory` in the guest")
	fs.String("user", "", "run as `user`: user, user:group, uid or uid:gid (default: the image's user, or root)")
	fs.Duration("timeout", 0, "kill the command after this long (0: no limit)")
	fs.String("stdin", "", "local `file` to feed the command's stdin")
}

func runExec(ctx context.Context, s *cli, fs *flag.FlagSet, args []string) error {
	id, argv := args[0], args[1:]
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	timeout, _ := time.ParseDuration(fs.Lookup("timeout").Value.String())
	req := api.ExecRequest{
		Argv:      argv,
		Env:       *fs.Lookup("e").Value.(*envFlags),
		Dir:       fs.Lookup("w").Value.String(),
		User:      fs.Lookup("user").Value.String(),
		TimeoutMS: timeout.Milliseconds(),
	}
	if path := fs.Lookup("stdin").Value.String(); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		req.Stdin = data
	}
	res, err := s.c.Exec(ctx, id, req, s.stdout, s.stderr)
	if err != nil {
		return err
	}
	if s.json {
		s.print(res, nil)
	} else if res.Signal != 0 || res.TimedOut {
		fmt.Fprintf(s.stderr, "sail: %s: killed by signal %d (timed out: %v)\n", argv[0], res.Signal, res.TimedOut)
	}
	switch {
	case res.ExitCode > 0:
		return exitCode(res.ExitCode)
	case res.ExitCode < 0:
		return exitCode(128 + res.Signal)
	}
	return nil
}

func runCat(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
	_, err := s.c.ReadFile(ctx, args[0], args[1], s.stdout)
	return err
}

func putFlags(fs *flag.FlagSet) {
	fs.String("mode", "", "octal permission bits of a created file (default 644)")
	fs.Bool("append", false, "append instead of replacing")
	fs.Bool("mkdir", false, "create missing parent directories")
}

func runPut(ctx context.Context, s *cli, fs *flag.FlagSet, args []string) error {
	var opts client.WriteOptions
	if m := fs.Lookup("mode").Value.String(); m != "" {
		mode, err := strconv.ParseUint(m, 8, 32)
		if err != nil {
			return fmt.Errorf("-mode %q is not octal", m)
		}
		opts.Mode = uint32(mode)
	}
	opts.Append = fs.Lookup("append").Value.String() == "true"
	opts.CreateDirs = fs.Lookup("mkdir").Value.String() == "true"
	f, err := os.Open(args[2])
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := s.c.WriteFile(ctx, args[0], args[1], f, opts)
	if err != nil {
		return err
	}
	return s.print(api.WriteFileResponse{Written: n}, func(w io.Writer) { fmt.Fprintf(w, "%d bytes written\n", n) })
}

func exposeFlags(fs *flag.FlagSet) {
	fs.String("addr", "", "host IP `address` to listen on (default 127.0.0.1)")
}

func runExpose(ctx context.Context, s *cli, fs *flag.FlagSet, args []string) error {
	req := api.ExposeRequest{HostAddr: fs.Lookup("addr").Value.String()}
	host, guest, ok := strings.Cut(args[1], ":")
	if !ok {
		host, guest = "0", host
	}
	var err1, err2 error
	req.HostPort, err1 = strconv.Atoi(host)
	req.GuestPort, err2 = strconv.Atoi(guest)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%q is not [HOST-PORT:]GUEST-PORT", args[1])
	}
	p, err := s.c.Expose(ctx, args[0], req)
	if err != nil {
		return err
	}
	return s.print(p, func(w io.Writer) { fmt.Fprintf(w, "%s → guest port %d\n", p.HostAddr, p.GuestPort) })
}

func runNet(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
	st, err := s.c.Network(ctx, args[0])
	if err != nil {
		return err
	}
	return s.print(st, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		defer tw.Flush()
		if !st.Running {
			fmt.Fprintf(tw, "%s\tdown: its network runs with its VM\n", st.BoxID)
			return
		}
		fmt.Fprintf(tw, "attached\t%v\n", st.GuestAttached)
		fmt.Fprintf(tw, "out\t%d bytes, %d frames\n", st.BytesOut, st.FramesOut)
		fmt.Fprintf(tw, "in\t%d bytes, %d frames\n", st.BytesIn, st.FramesIn)
		fmt.Fprintf(tw, "dropped frames\t%d\n", st.FramesDropped)
		fmt.Fprintf(tw, "connections out\t%d (%d open)\n", st.ConnectionsOut, st.OpenConnections)
		fmt.Fprintf(tw, "connections in\t%d\n", st.ConnectionsIn)
		fmt.Fprintf(tw, "refused\t%d connections, %d lookups\n", st.Refused, st.RefusedLookups)
		fmt.Fprintf(tw, "failed dials\t%d\n", st.DialFailures)
		// The same link from its other end: the VMM's network device.
		if d := st.Device; d != nil {
			fmt.Fprintf(tw, "device out\t%d bytes, %d frames (%d invalid, %d dropped)\n", d.BytesOut, d.FramesOut, d.InvalidOut, d.DroppedOut)
			fmt.Fprintf(tw, "device in\t%d bytes, %d frames (%d invalid, %d dropped)\n", d.BytesIn, d.FramesIn, d.InvalidIn, d.DroppedIn)
			if d.PeerGone {
				fmt.Fprintf(tw, "device link\tgone: the network closed it\n")
			}
		}
	})
}

func runUnexpose(ctx context.Context, s *cli, _ *flag.FlagSet, args []string) error {
	port, err := strconv.Atoi(args[1])
	if err != nil {
		return fmt.Errorf("host port %q is not a number", args[1])
	}
	return s.c.Unexpose(ctx, args[0], port)
}
