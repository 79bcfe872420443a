package guestagent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHostnameFromCmdline(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    string
		err     bool
	}{
		{"", "sailbox", false},
		{"console=ttyS0 reboot=k panic=1\n", "sailbox", false},
		{"sailbox.hostname=vm-1", "vm-1", false},
		{"console=ttyS0 sailbox.hostname=vm-1 quiet\n", "vm-1", false},
		{"console=ttyS0\tsailbox.hostname=web.example.com\n", "web.example.com", false},
		{"sailbox.hostname=a sailbox.hostname=b", "b", false},
		{"sailbox.hostname=", "sailbox", false},
		{"sailbox.hostname=a sailbox.hostname=", "sailbox", false},
		{"xsailbox.hostname=nope sailbox.hostnamex=nope sailbox.hostname", "sailbox", false},
		{"sailbox.hostname=bad_name", "sailbox", true},
		{"sailbox.hostname=-lead", "sailbox", true},
		{`sailbox.hostname="quoted"`, "sailbox", true},
		{"sailbox.hostname=" + strings.Repeat("a", 64), strings.Repeat("a", 64), false},
		{"sailbox.hostname=" + strings.Repeat("a", 65), "sailbox", true},
	} {
		got, err := hostnameFromCmdline(tc.cmdline)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("hostnameFromCmdline(%q) = %q, %v; want %q, error %v", tc.cmdline, got, err, tc.want, tc.err)
		}
	}
}

func TestIsMountPoint(t *testing.T) {
	const mounts = `rootfs / rootfs rw 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /tmp/inner tmpfs rw 0 0
tmpfs /mnt/with\040space tmpfs rw 0 0
tmpfs /mnt/back\134slash tmpfs rw 0 0
short
`
	for dir, want := range map[string]bool{
		"/":                  true,
		"/proc":              true,
		"/tmp":               false,
		"/tmp/inner":         true,
		"/mnt/with space":    true,
		`/mnt/with\040space`: false,
		`/mnt/back\slash`:    true,
		"short":              false,
	} {
		if got := isMountPoint(mounts, dir); got != want {
			t.Errorf("isMountPoint(%q) = %v, want %v", dir, got, want)
		}
	}
	if !isMountPoint(mounts+"tmpfs /tmp tmpfs rw 0 0", "/tmp") {
		t.Error("isMountPoint misses a last line without a newline")
	}
}

func TestUnescapeMountField(t *testing.T) {
	for in, want := range map[string]string{
		"plain":         "plain",
		`a\040b`:        "a b",
		`tab\011nl\012`: "tab\tnl\n",
		`back\134slash`: `back\slash`,
		`short\04`:      `short\04`,
		`not\089octal`:  `not\089octal`,
		`trailing\`:     `trailing\`,
	} {
		if got := unescapeMountField(in); got != want {
			t.Errorf("unescapeMountField(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestInstallBusybox(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh to run a fake busybox")
	}
	bin := t.TempDir()
	// Without busybox, nothing happens.
	if installed, err := installBusybox(bin); installed || err != nil {
		t.Fatalf("installBusybox without busybox = %v, %v", installed, err)
	}
	// A fake busybox that records its arguments and installs sh next to
	// itself.
	script := "#!/bin/sh\ncd \"$(dirname \"$0\")\" && echo \"$@\" >args && ln -s busybox sh\n"
	if err := os.WriteFile(filepath.Join(bin, "busybox"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if installed, err := installBusybox(bin); !installed || err != nil {
		t.Fatalf("installBusybox = %v, %v; want true, nil", installed, err)
	}
	if args, _ := os.ReadFile(filepath.Join(bin, "args")); string(args) != "--install -s "+bin+"\n" {
		t.Fatalf("busybox ran with %q", args)
	}
	// Once sh exists, busybox is left alone.
	os.Remove(filepath.Join(bin, "args"))
	if installed, err := installBusybox(bin); installed || err != nil {
		t.Fatalf("installBusybox with sh = %v, %v", installed, err)
	}
	if _, err := os.Stat(filepath.Join(bin, "args")); err == nil {
		t.Fatal("busybox ran although sh exists")
	}
	// A failing busybox is reported with its output.
	os.Remove(filepath.Join(bin, "sh"))
	os.WriteFile(filepath.Join(bin, "busybox"), []byte("#!/bin/sh\necho cannot >&2\nexit 1\n"), 0o755)
	if _, err := installBusybox(bin); err == nil || !strings.Contains(err.Error(), "cannot") || !strings.Contains(err.Error(), "--install -s") {
		t.Fatalf("installBusybox with a failing busybox = %v", err)
	}
}
