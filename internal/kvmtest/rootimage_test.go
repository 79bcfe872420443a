package kvmtest

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The image holds busybox, its applets as links, the mount points and the
// given files; debugfs (e2fsprogs) reads it without mounting it.
func TestRootImage(t *testing.T) {
	img := filepath.Join(t.TempDir(), "root.ext4")
	RootImage(t, img, 16<<20, map[string]string{"etc/os-release": "ID=sailbox-test\n", "etc/group": "root:x:0:\napp:x:1000:\n"})
	debugfs := func(cmd string) string {
		t.Helper()
		out, err := exec.Command("debugfs", "-R", cmd, img).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs -R %q: %v: %s", cmd, err, out)
		}
		return string(out)
	}
	for cmd, want := range map[string]string{
		"cat /etc/os-release": "ID=sailbox-test\n",
		"cat /etc/group":      "app:x:1000:",
		"cat /etc/passwd":     "root:x:0:0:root:/root:/bin/sh",
		"stat /bin/sh":        "Type: symlink",
		"stat /bin/busybox":   "Type: regular",
		"stat /root":          "Mode:  0700",
		"stat /proc":          "Type: directory",
	} {
		if got := debugfs(cmd); !strings.Contains(got, want) {
			t.Errorf("debugfs %q: %q lacks %q", cmd, got, want)
		}
	}
	if got := debugfs("stat /"); !strings.Contains(got, "User:     0   Group:     0") {
		t.Errorf("the root directory is not root's: %s", got)
	}
}
