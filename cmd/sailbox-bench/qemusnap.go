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

// qemuSnapshot is QEMU's own snapshot of the same guest: save (stop, then
// migrate to a file) and restore (-incoming from the file, cont, first
// exec), as TARGETS.md measured it.
type qemuSnapshot struct {
	save, restore time.Duration
	fileBytes     int64
}

// qemuArgs are benchQEMU's machine, with a monitor on mon.
func qemuArgs(o options, cid uint32, mon string) []string {
	return []string{
		"-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host", "-m", fmt.Sprint(o.memMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "null", "-no-reboot",
		"-kernel", o.kernel, "-initrd", o.initrd, "-append", "console=ttyS0 quiet panic=-1",
		"-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", cid),
		"-monitor", "unix:" + mon + ",server=on,wait=off",
	}
}

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

// benchQEMUSnapshot boots the guest under QEMU, saves it with QEMU's
// migration to a file, and restores it in a new QEMU to the first exec.
func benchQEMUSnapshot(ctx context.Context, o options, cid uint32) (qemuSnapshot, error) {
	var res qemuSnapshot
	dir, err := os.MkdirTemp("", "sailbox-bench-qemu")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	state := filepath.Join(dir, "state")
	agent := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) { return dialVsock(ctx, cid) }}
	start := func(mon string, extra ...string) (*exec.Cmd, chan struct{}, *hmp, error) {
		cmd := exec.CommandContext(ctx, o.qemu, append(qemuArgs(o, cid, mon), extra...)...)
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

	cmd, done, h, err := start(filepath.Join(dir, "mon1"))
	if err != nil {
		return res, err
	}
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	_, err = agent.WaitHealthy(wctx, 5*time.Millisecond, done)
	cancel()
	if err != nil {
		cmd.Process.Kill()
		<-done
		return res, err
	}
	t0 := time.Now()
	if _, err := h.do("stop"); err == nil {
		_, err = h.do("migrate \"exec:cat > " + state + "\"")
	}
	for err == nil {
		var out string
		out, err = h.do("info migrate")
		if strings.Contains(out, "Migration status: completed") {
			break
		}
		if strings.Contains(out, "Migration status: failed") {
			err = fmt.Errorf("qemu migration failed: %s", out)
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

	t0 = time.Now()
	cmd, done, h, err = start(filepath.Join(dir, "mon2"), "-incoming", "exec:cat "+state)
	if err != nil {
		return res, err
	}
	defer func() { cmd.Process.Kill(); <-done }()
	for {
		out, err := h.do("info status")
		if err != nil {
			return res, err
		}
		if strings.Contains(out, "paused") && !strings.Contains(out, "inmigrate") {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := h.do("cont"); err != nil {
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
