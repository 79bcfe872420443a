package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/guestagent"
)

// qemuSnapMode is one of the ways QEMU saves and restores a guest, each
// measured in the same run (benchSnapshots).
type qemuSnapMode struct {
	// rows prefixes the mode's row IDs: <rows>.save, .restore, .file.
	rows  string
	label string
	// sharedMemory: the guest's RAM is a shared mapping of a file
	// (memory-backend-file, share=on) and migration's x-ignore-shared
	// capability is on, on both sides: the migration stream then carries
	// device state only, and the restoring QEMU maps the same file as its
	// RAM instead of loading it from the stream. It is QEMU's fastest
	// snapshot, for a host that keeps the file (here on the TMPDIR, a
	// tmpfs in the KVM lab).
	sharedMemory bool
}

// qemuSnapModes are the modes the bench measures, in the order it runs
// them. The first's row IDs (qemu.save, ...) predate the second.
var qemuSnapModes = []qemuSnapMode{
	{rows: "qemu", label: "RAM in the stream"},
	{rows: "qemu.shared", label: "RAM in a shared file, x-ignore-shared", sharedMemory: true},
}

// qemuSnapshot is one save (stop, then migrate to a file) and restore
// (-incoming from the file, cont, first exec) of QEMU's own, as
// TARGETS.md measured it.
type qemuSnapshot struct {
	save, restore time.Duration
	fileBytes     int64 // the migration stream's file
}

// qemuArgs are benchQEMU's machine, with a monitor on mon unless it is
// empty, and its RAM a shared mapping of memFile unless that is empty.
func qemuArgs(o options, cid uint32, mon, memFile string) []string {
	machine := "microvm,acpi=off"
	var memory []string
	if memFile != "" {
		machine += ",memory-backend=mem"
		memory = []string{"-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", o.memMiB, qemuOptValue(memFile))}
	}
	args := []string{
		"-M", machine, "-enable-kvm", "-cpu", "host", "-m", fmt.Sprint(o.memMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "null", "-no-reboot",
		"-kernel", o.kernel, "-initrd", o.initrd, "-append", "console=ttyS0 quiet panic=-1",
		"-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", cid),
	}
	args = append(args, memory...)
	if mon != "" {
		args = append(args, "-monitor", "unix:"+qemuOptValue(mon)+",server=on,wait=off")
	}
	return args
}

// qemuOptValue escapes a value for QEMU's key=value,... option syntax,
// where a comma is written twice.
func qemuOptValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// hmp is a connection to QEMU's human monitor.
type hmp struct {
	c net.Conn
	r *bufio.Reader
}

func dialHMP(ctx context.Context, path string) (*hmp, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			h := &hmp{c: c, r: bufio.NewReader(c)}
			_, err := h.readPrompt()
			return h, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qemu monitor: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// readPrompt reads up to the next "(qemu) " prompt.
func (h *hmp) readPrompt() (string, error) {
	var sb strings.Builder
	for {
		b, err := h.r.ReadByte()
		if err != nil {
			return sb.String(), fmt.Errorf("qemu monitor: %w", err)
		}
		sb.WriteByte(b)
		if strings.HasSuffix(sb.String(), "(qemu) ") {
			return sb.String(), nil
		}
	}
}

func (h *hmp) do(cmd string) (string, error) {
	if _, err := fmt.Fprintf(h.c, "%s\n", cmd); err != nil {
		return "", fmt.Errorf("qemu monitor %q: %w", cmd, err)
	}
	return h.readPrompt()
}

// must runs a command that prints nothing when it succeeds.
func (h *hmp) must(cmd string) error {
	out, err := h.do(cmd)
	if err != nil {
		return err
	}
	if reply := hmpReply(out); reply != "" {
		return fmt.Errorf("qemu monitor %q: %s", cmd, reply)
	}
	return nil
}

// hmpReply is a command's output without the monitor's echo of the
// command (the line editor's redrawing, up to the first CRLF) and the
// prompt that follows: "" for a command that succeeded silently, "Error:
// ..." or "unknown command: ..." for one that failed.
func hmpReply(out string) string {
	_, reply, _ := strings.Cut(out, "\r\n")
	return strings.TrimSpace(strings.TrimSuffix(reply, "(qemu) "))
}

// vmStatus is the state `info status` printed ("running", "paused
// (inmigrate)"), "" if out has none.
func vmStatus(out string) string { return hmpField(out, "VM status: ") }

// migrationStatus is the "Migration status" `info migrate` printed
// ("active", "completed", "failed"), "" if out has none.
func migrationStatus(out string) string { return hmpField(out, "Migration status: ") }

// hmpField is the rest of the line of out that follows label, "" if out
// has no such line.
func hmpField(out, label string) string {
	_, after, ok := strings.Cut(out, label)
	if !ok {
		return ""
	}
	value, _, _ := strings.Cut(after, "\r\n")
	return strings.TrimSpace(value)
}

// benchQEMUSnapshot boots the guest under QEMU, saves it with QEMU's
// migration to a file, and restores it in a new QEMU to the first exec,
// in the given mode.
func benchQEMUSnapshot(ctx context.Context, o options, cid uint32, mode qemuSnapMode) (qemuSnapshot, error) {
	var res qemuSnapshot
	dir, err := os.MkdirTemp("", "sailbox-bench-qemu")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	state := filepath.Join(dir, "state")
	var memFile string
	if mode.sharedMemory {
		memFile = filepath.Join(dir, "memory")
	}
	agent := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) { return dialVsock(ctx, cid) }}
	start := func(mon string, extra ...string) (*exec.Cmd, chan struct{}, *hmp, error) {
		cmd := exec.CommandContext(ctx, o.qemu, append(qemuArgs(o, cid, mon, memFile), extra...)...)
		if err := cmd.Start(); err != nil {
			return nil, nil, nil, err
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		mctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		h, err := dialHMP(mctx, mon)
		if err != nil {
			cmd.Process.Kill()
			<-done
			return nil, nil, nil, err
		}
		return cmd, done, h, nil
	}
	// x-ignore-shared must be on on both sides: the stream says so, and a
	// QEMU without it refuses the stream.
	ignoreShared := func(h *hmp) error {
		if !mode.sharedMemory {
			return nil
		}
		return h.must("migrate_set_capability x-ignore-shared on")
	}

	cmd, done, h, err := start(filepath.Join(dir, "mon1"))
	if err != nil {
		return res, err
	}
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	_, err = agent.WaitHealthy(wctx, 5*time.Millisecond, done)
	cancel()
	if err == nil {
		err = ignoreShared(h)
	}
	if err != nil {
		cmd.Process.Kill()
		<-done
		return res, err
	}
	t0 := time.Now()
	if err = h.must("stop"); err == nil {
		// Detached (-d): a synchronous migrate over a monitor socket
		// returns only when its status timer next fires, once a second
		// (hmp_migrate_status_cb), which would round every save up to a
		// whole second. Its outcome is info migrate's.
		err = h.must("migrate -d \"exec:cat > " + state + "\"")
	}
	for err == nil {
		var out string
		if out, err = h.do("info migrate"); err != nil {
			break
		}
		if st := migrationStatus(out); st == "completed" {
			break
		} else if st == "failed" || st == "cancelled" {
			err = fmt.Errorf("qemu migration %s: %s", st, hmpReply(out))
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.save = time.Since(t0)
	cmd.Process.Kill()
	<-done
	if err != nil {
		return res, err
	}
	if fi, err := os.Stat(state); err == nil {
		res.fileBytes = fi.Size()
	}

	// The restore: QEMU reads the stream as soon as it starts, unless it
	// needs the capability first (-incoming defer, then migrate_incoming).
	t0 = time.Now()
	incoming := "exec:cat " + state
	if mode.sharedMemory {
		cmd, done, h, err = start(filepath.Join(dir, "mon2"), "-incoming", "defer")
		if err == nil {
			if err = ignoreShared(h); err == nil {
				err = h.must("migrate_incoming \"" + incoming + "\"")
			}
			if err != nil {
				cmd.Process.Kill()
				<-done
			}
		}
	} else {
		cmd, done, h, err = start(filepath.Join(dir, "mon2"), "-incoming", incoming)
	}
	if err != nil {
		return res, err
	}
	defer func() { cmd.Process.Kill(); <-done }()
	for {
		out, err := h.do("info status")
		if err != nil {
			return res, err
		}
		if st := vmStatus(out); strings.HasPrefix(st, "paused") && !strings.Contains(st, "inmigrate") {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := h.must("cont"); err != nil {
		return res, err
	}
	wctx, cancel = context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if _, err := agent.WaitHealthy(wctx, 5*time.Millisecond, done); err != nil {
		return res, err
	}
	if _, _, code, err := agent.Run(wctx, "true"); err != nil || code != 0 {
		return res, fmt.Errorf("first exec after qemu restore: exit %d, %v", code, err)
	}
	res.restore = time.Since(t0)
	return res, nil
}
