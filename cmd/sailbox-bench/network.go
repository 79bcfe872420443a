package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// The network rows: guest → host TCP throughput and connection set-up,
// Sailbox (virtio-net, sailbox-net's user-space stack) against QEMU's
// user-mode networking (-netdev user, libslirp), in rounds of one box of
// each, both booted on the same kernel, initramfs and root image (whose
// python3 is the client in both). The host side is a sink on this host's
// 127.0.0.1: the Sailbox guest reaches it as netapi.HostIP, QEMU's as
// slirp's host address, 10.0.2.2.

// QEMU's user-mode network: its guest address, gateway (the host's
// loopback) and DNS server.
var (
	slirpNet = guestagent.NetConfig{
		Addr:    netip.MustParsePrefix("10.0.2.15/24"),
		Gateway: netip.MustParseAddr("10.0.2.2"),
		DNS:     netip.MustParseAddr("10.0.2.3"),
	}
	sailboxNet = guestagent.NetConfig{
		Addr:    netip.PrefixFrom(netapi.GuestIP, netapi.Subnet.Bits()),
		Gateway: netapi.GatewayIP,
		DNS:     netapi.GatewayIP,
		MTU:     netapi.MTU,
	}
)

// netStall bounds one transfer: a stream that moves no byte for this long
// is a stall (the guest's socket times out), and is reported as one.
const netStall = 60 * time.Second

// guestStream sends N MiB to HOST:PORT, half-closes and waits for the
// sink's close, so that the exec ends once the host has every byte.
const guestStream = `import socket, sys
h, p, n, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((h, p), timeout=t)
b = bytes(1 << 20)
for _ in range(n):
    s.sendall(b)
s.shutdown(socket.SHUT_WR)
s.recv(1)
`

// guestConnects opens and closes M connections to HOST:PORT and prints
// the set-up time of each (connect returned), in microseconds.
const guestConnects = `import socket, sys, time
h, p, m, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = []
for _ in range(m):
    t0 = time.perf_counter()
    s = socket.create_connection((h, p), timeout=t)
    out.append(int((time.perf_counter() - t0) * 1e6))
    s.close()
print(" ".join(map(str, out)))
`

// sink is the host's end: each connection is read to its end and closed;
// the streams' byte counts and durations (accept to end) come out on got.
type sink struct {
	l   net.Listener
	got chan sunk
}

type sunk struct {
	n   int64
	d   time.Duration
	err error
}

func newSink() (*sink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("network sink: %w", err)
	}
	s := &sink{l: l, got: make(chan sunk, 1024)}
	go s.serve()
	return s, nil
}

func (s *sink) port() int { return s.l.Addr().(*net.TCPAddr).Port }

func (s *sink) serve() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			t := time.Now()
			c.SetReadDeadline(time.Now().Add(10 * time.Minute)) // a hang detector
			n, err := io.Copy(io.Discard, c)
			select {
			case s.got <- sunk{n: n, d: time.Since(t), err: err}:
			default:
			}
		}()
	}
}

// drain forgets what the sink received so far (the connection rows').
func (s *sink) drain() {
	for {
		select {
		case <-s.got:
		default:
			return
		}
	}
}

// netGuest is one box of a round: its agent, and where it finds the sink.
type netGuest struct {
	agent *guestagent.Client
	host  string // the sink's host's address, seen from the guest
	// counters returns the network's counters (empty: none); stats
	// adds, for a stall's report, where the guest's vCPUs are.
	counters, stats func() string
}

// netResult is what one box of a round measured.
type netResult struct {
	mibps  float64         // 0: the stream failed
	after  string          // the network's counters after the stream
	stall  string          // why the stream failed
	setups []time.Duration // connection set-up times
}

// measureNet streams o.netMiB MiB to the sink from g, then opens
// o.netConns connections to it.
func measureNet(ctx context.Context, o options, s *sink, g netGuest) (netResult, error) {
	var r netResult
	s.drain()
	t := strconv.FormatFloat(netStall.Seconds(), 'f', 0, 64)
	// The guest's socket times out on a stall; this bounds a guest that
	// answers nothing, or a stream under 0.5 MiB/s, which is reported as
	// a stall too (its counters tell which).
	xctx, cancel := context.WithTimeout(ctx, netStall+time.Duration(2*o.netMiB)*time.Second)
	_, errOut, code, err := g.agent.Run(xctx, "python3", "-c", guestStream, g.host, strconv.Itoa(s.port()), strconv.Itoa(o.netMiB), t)
	cancel()
	want := int64(o.netMiB) << 20
	switch {
	case err != nil || code != 0:
		r.stall = fmt.Sprintf("guest stream: exit %d, %v: %s; %s", code, err, lastLine(errOut), g.stats())
	default:
		select {
		case got := <-s.got:
			if got.n != want {
				r.stall = fmt.Sprintf("the sink got %d of %d bytes (%v); %s", got.n, want, got.err, g.stats())
			} else {
				r.mibps = float64(o.netMiB) / got.d.Seconds()
			}
		case <-time.After(10 * time.Second):
			r.stall = "the guest finished, the sink saw no end; " + g.stats()
		}
	}
	r.after = g.counters()
	if r.stall != "" {
		return r, nil // a box whose stream stalled may answer nothing more
	}
	xctx, cancel = context.WithTimeout(ctx, netStall+time.Duration(o.netConns)*time.Second)
	out, errOut, code, err := g.agent.Run(xctx, "python3", "-c", guestConnects, g.host, strconv.Itoa(s.port()), strconv.Itoa(o.netConns), t)
	cancel()
	if err != nil || code != 0 {
		return r, fmt.Errorf("guest connections: exit %d, %v: %s; %s", code, err, lastLine(errOut), g.stats())
	}
	for _, f := range strings.Fields(string(out)) {
		us, err := strconv.Atoi(f)
		if err != nil {
			return r, fmt.Errorf("guest connections: output %q: %w", out, err)
		}
		r.setups = append(r.setups, time.Duration(us)*time.Microsecond)
	}
	return r, nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// benchNetwork runs o.netRuns rounds of one Sailbox box and one QEMU guest
// (when o.qemu is set) and prints the network rows.
func benchNetwork(ctx context.Context, sys *kvm.System, o options, res *Results, stdout, stderr io.Writer) error {
	if o.image == "" {
		fmt.Fprintf(stdout, "\nnetwork rows skipped: no -image (the guests' client is its python3)\n")
		res.note("net rows skipped: no -image")
		return nil
	}
	if _, err := os.Stat(o.netBinary); err != nil {
		return fmt.Errorf("network rows: sailbox-net (-net-binary): %w", err)
	}
	dir, err := os.MkdirTemp("", "sbn") // short: it holds Unix sockets
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ib, err := newImageBench(sys, o, dir)
	if err != nil {
		return err
	}
	s, err := newSink()
	if err != nil {
		return err
	}
	defer s.l.Close()

	var sRates, qRates []float64
	var sSetups, qSetups []time.Duration
	sStalls, qStalls := 0, 0
	for i := range o.netRuns {
		var r netResult
		err := res.retryBoot(stderr, fmt.Sprintf("sailbox network round %d", i), func() (err error) {
			r, err = ib.netRound(ctx, s, i)
			return err
		})
		if err != nil {
			return fmt.Errorf("sailbox network round %d: %w", i, err)
		}
		report(stderr, "sailbox", i, r)
		if r.stall != "" {
			sStalls++
		} else {
			sRates = append(sRates, r.mibps)
		}
		sSetups = append(sSetups, r.setups...)
		if o.qemu == "" {
			continue
		}
		r, err = qemuNetRound(ctx, o, s, uint32(200+i))
		if err != nil {
			fmt.Fprintf(stderr, "qemu    network round %d: failed, left out: %v\n", i, err)
			res.note("qemu network round %d failed, left out: %v", i, err)
			continue
		}
		report(stderr, "qemu   ", i, r)
		if r.stall != "" {
			qStalls++
		} else {
			qRates = append(qRates, r.mibps)
		}
		qSetups = append(qSetups, r.setups...)
	}

	res.values("net.throughput.sailbox", "net", "TCP throughput guest → host, one stream, sailbox", "MiB/s", sRates...)
	res.values("net.throughput.qemu", "net", "TCP throughput guest → host, one stream, qemu -netdev user", "MiB/s", qRates...)
	res.durations("net.setup.sailbox", "net", "TCP connection set-up guest → host, sailbox", sSetups...)
	res.durations("net.setup.qemu", "net", "TCP connection set-up guest → host, qemu -netdev user", qSetups...)
	if sStalls+qStalls > 0 {
		res.note("net: streams stalled (no byte in %v), left out of the throughput: sailbox %d, qemu %d", netStall, sStalls, qStalls)
	}
	fmt.Fprintf(stdout, "\nnetwork, guest → host 127.0.0.1 (python3 in the image; QEMU: -netdev user); %d rounds, each a %d MiB stream and %d connections\n",
		o.netRuns, o.netMiB, o.netConns)
	fmt.Fprintf(stdout, "%-34s %12s %12s %10s\n", "median (same run)", "sailbox", "qemu", "ratio")
	rate := func(id string) string {
		v, ok := res.p50(id)
		if !ok {
			return "-"
		}
		return fmt.Sprintf("%.1f MiB/s", v)
	}
	dur := func(id string) string {
		v, ok := res.p50(id)
		if !ok {
			return "-"
		}
		return fromMS(v).Round(time.Microsecond).String()
	}
	ratioOf := func(num, den, label string) string {
		_, okN := res.p50(num)
		_, okD := res.p50(den)
		if !okN || !okD {
			return "-"
		}
		return fmt.Sprintf("%.3f", res.ratio(num+"/"+den, label, num, den))
	}
	fmt.Fprintf(stdout, "%-34s %12s %12s %10s\n", "TCP throughput, one stream", rate("net.throughput.sailbox"), rate("net.throughput.qemu"),
		ratioOf("net.throughput.sailbox", "net.throughput.qemu", "sailbox TCP throughput / qemu's (higher is better)"))
	fmt.Fprintf(stdout, "%-34s %12s %12s %10s\n", "TCP connection set-up (p50)", dur("net.setup.sailbox"), dur("net.setup.qemu"),
		ratioOf("net.setup.sailbox", "net.setup.qemu", "sailbox TCP connection set-up / qemu's"))
	fmt.Fprintf(stdout, "%-34s %12d %12d\n", "streams stalled (no byte in "+netStall.String()+")", sStalls, qStalls)
	fmt.Fprintf(stdout, "  (throughput: sailbox ÷ qemu, higher is better; set-up: sailbox ÷ qemu, lower is better)\n")
	return nil
}

func report(w io.Writer, who string, i int, r netResult) {
	if r.stall != "" {
		fmt.Fprintf(w, "%s network round %d: STREAM STALLED: %s; connection set-up p50 %v\n", who, i, r.stall, median(r.setups))
		return
	}
	fmt.Fprintf(w, "%s network round %d: %.1f MiB/s, connection set-up p50 %v %s\n", who, i, r.mibps, median(r.setups), r.after)
}

// netRound boots a box on the image with a network of its own (a new
// sailbox-net that lets it reach the host's loopback) and measures it.
func (ib *imageBench) netRound(ctx context.Context, s *sink, i int) (netResult, error) {
	// Names by machine, not round: a round whose boot broke is taken
	// again (retryBoot) beside the first attempt's files.
	l := netapi.Launch{
		Socket:  filepath.Join(ib.dir, fmt.Sprintf("n%d.sock", ib.n)),
		Control: filepath.Join(ib.dir, fmt.Sprintf("n%d.ctl", ib.n)),
		Box:     fmt.Sprintf("bench%d", i),
		Allow:   []string{netapi.HostIP.String()},
	}
	cmd, err := l.Start(ib.o.netBinary, filepath.Join(ib.dir, fmt.Sprintf("n%d.log", ib.n)))
	if err != nil {
		return netResult{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := waitNet(ctx, l.Control); err != nil {
		return netResult{}, err
	}
	ib.net = &netBox{socket: l.Socket, cmdline: sailboxNet.KernelParam()}
	b, _, err := ib.boot(ctx, true, false)
	ib.net = nil
	if err != nil {
		return netResult{}, err
	}
	defer b.stop()
	counters := func() string {
		var sb strings.Builder
		if st, ok := b.m.NetStats(); ok {
			fmt.Fprintf(&sb, "virtio-net %+v", st)
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if st, err := netapi.GetStats(sctx, l.Control); err == nil {
			fmt.Fprintf(&sb, "; sailbox-net %+v", st)
		} else {
			fmt.Fprintf(&sb, "; sailbox-net: %v", err)
		}
		return sb.String()
	}
	return measureNet(ctx, ib.o, s, netGuest{agent: b.agent, host: netapi.HostIP.String(), counters: counters, stats: func() string {
		var sb strings.Builder
		sb.WriteString(counters())
		// Where the guest is, twice: a vCPU that moves is alive.
		fmt.Fprintf(&sb, "\nvCPUs:\n%s", b.m.DescribeVCPUs())
		time.Sleep(time.Second)
		fmt.Fprintf(&sb, "vCPUs a second later:\n%s", b.m.DescribeVCPUs())
		return b.console.wrap(errors.New(sb.String())).Error()
	}})
}

// waitNet waits for a sailbox-net to answer on its control socket.
func waitNet(ctx context.Context, control string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := netapi.GetStats(sctx, control)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sailbox-net did not answer: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// qemuNetRound boots the same kernel, initramfs and image (a throwaway
// overlay of it) under QEMU with a user-mode network and measures it.
func qemuNetRound(ctx context.Context, o options, s *sink, cid uint32) (netResult, error) {
	cmdline := strings.Join([]string{"console=ttyS0 panic=-1", imageRootCmdline, slirpNet.KernelParam()}, " ")
	cmd := exec.CommandContext(ctx, o.qemu,
		"-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host", "-m", fmt.Sprint(o.memMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "null", "-no-reboot",
		"-kernel", o.kernel, "-initrd", o.initrd, "-append", cmdline,
		"-drive", "file="+o.image+",format=raw,if=none,id=vda,snapshot=on",
		"-device", "virtio-blk-device,drive=vda",
		"-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0",
		"-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", cid))
	var qerr bytes.Buffer
	cmd.Stderr = &qerr
	if err := cmd.Start(); err != nil {
		return netResult{}, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() { cmd.Process.Kill(); <-done }()
	agent := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) { return dialVsock(ctx, cid) }}
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	_, err := agent.WaitHealthy(wctx, 5*time.Millisecond, done)
	cancel()
	if err != nil {
		select {
		case <-done:
			err = fmt.Errorf("%w; qemu exited: %s", err, qerr.String())
		default:
		}
		return netResult{}, err
	}
	return measureNet(ctx, o, s, netGuest{agent: agent, host: slirpNet.Gateway.String(), counters: func() string { return "" }, stats: func() string { return "(qemu: no counters)" }})
}
