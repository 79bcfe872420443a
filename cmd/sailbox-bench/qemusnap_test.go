package main

import (
	"slices"
	"strings"
	"testing"
)

func TestQEMUArgsSharedMemory(t *testing.T) {
	o := options{kernel: "/k/bzImage", initrd: "/i/initramfs.cpio", memMiB: 256}
	plain := qemuArgs(o, 7, "", "")
	if slices.Contains(plain, "-monitor") || slices.Contains(plain, "-object") || plain[1] != "microvm,acpi=off" {
		t.Errorf("plain machine: %q", plain)
	}
	shared := qemuArgs(o, 7, "/run/x/mon", "/run/x,y/memory")
	joined := strings.Join(shared, " ")
	for _, want := range []string{
		"-M microvm,acpi=off,memory-backend=mem ",
		"-m 256 ",
		// The backend's size is -m's; a comma in the path is doubled.
		"-object memory-backend-file,id=mem,size=256M,mem-path=/run/x,,y/memory,share=on",
		"-monitor unix:/run/x/mon,server=on,wait=off",
		"-device vhost-vsock-device,guest-cid=7",
	} {
		if !strings.Contains(joined+" ", want) {
			t.Errorf("args lack %q: %s", want, joined)
		}
	}
	// Everything else is the plain machine's: the modes boot the same guest.
	var rest []string
	for i := 0; i < len(shared); i++ {
		switch shared[i] {
		case "-object", "-monitor":
			i++
			continue
		case "microvm,acpi=off,memory-backend=mem":
			rest = append(rest, "microvm,acpi=off")
			continue
		}
		rest = append(rest, shared[i])
	}
	if !slices.Equal(rest, plain) {
		t.Errorf("shared-memory args differ beyond memory and monitor:\n%q\n%q", rest, plain)
	}
}

// Monitor output as QEMU 7.2's HMP prints it over a socket: the line
// editor echoes each keystroke with escape sequences, then CRLF, the
// reply and the next prompt.
const (
	hmpEchoStop   = "s\x1b[K\x1b[Dst\x1b[K\x1b[D\x1b[Dsto\x1b[K\x1b[D\x1b[D\x1b[Dstop\x1b[K\r\n(qemu) "
	hmpBadCap     = "m\x1b[K\x1b[Dmi\x1b[K migrate_set_capability x-bogus on\x1b[K\r\nError: invalid parameter value: x-bogus\r\n(qemu) "
	hmpUnknown    = "bogus\x1b[K\r\nunknown command: 'bogus'\r\n(qemu) "
	hmpStatusIn   = "info status\x1b[K\r\nVM status: paused (inmigrate)\r\n(qemu) "
	hmpStatusDone = "info status\x1b[K\r\nVM status: paused\r\n(qemu) "
	hmpMigrate    = "info migrate\x1b[K\r\nglobals:\r\nstore-global-state: on\r\nMigration status: completed\r\ntotal time: 5 ms\r\n(qemu) "
)

func TestHMPReplies(t *testing.T) {
	for _, c := range []struct{ out, reply string }{
		{hmpEchoStop, ""},
		{hmpBadCap, "Error: invalid parameter value: x-bogus"},
		{hmpUnknown, "unknown command: 'bogus'"},
	} {
		if got := hmpReply(c.out); got != c.reply {
			t.Errorf("hmpReply(%q) = %q, want %q", c.out, got, c.reply)
		}
	}
	if got := vmStatus(hmpStatusIn); got != "paused (inmigrate)" {
		t.Errorf("vmStatus = %q", got)
	}
	if got := vmStatus(hmpStatusDone); got != "paused" {
		t.Errorf("vmStatus = %q", got)
	}
	if got := migrationStatus(hmpMigrate); got != "completed" {
		t.Errorf("migrationStatus = %q", got)
	}
	if got := migrationStatus(hmpEchoStop); got != "" {
		t.Errorf("migrationStatus of no status = %q", got)
	}
}
