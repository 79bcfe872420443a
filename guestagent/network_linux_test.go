//go:build linux

package guestagent

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// writeResolvConf writes the box's name server where the root has no
// usable resolver configuration, replacing a link rather than writing
// through it, and keeps a file that names a name server.
func TestWriteResolvConf(t *testing.T) {
	dns := netip.MustParseAddr("192.168.127.1")
	want := string(resolvConf(dns))
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root string)
		wrote bool
		want  string // the file's content afterwards; "" is want
	}{
		{"no /etc", func(t *testing.T, root string) {}, true, ""},
		{"none", func(t *testing.T, root string) { mkdir(t, root, "etc") }, true, ""},
		{"empty", func(t *testing.T, root string) { write(t, root, "etc/resolv.conf", "") }, true, ""},
		{"stub", func(t *testing.T, root string) {
			write(t, root, "etc/resolv.conf", "nameserver 127.0.0.53\noptions edns0\n")
		}, true, ""},
		{"dangling link", func(t *testing.T, root string) {
			mkdir(t, root, "etc")
			if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf")); err != nil {
				t.Fatal(err)
			}
		}, true, ""},
		{"link to a stub", func(t *testing.T, root string) {
			write(t, root, "run/stub.conf", "nameserver 127.0.0.53\n")
			mkdir(t, root, "etc")
			if err := os.Symlink("../run/stub.conf", filepath.Join(root, "etc/resolv.conf")); err != nil {
				t.Fatal(err)
			}
		}, true, ""},
		{"the image's own", func(t *testing.T, root string) {
			write(t, root, "etc/resolv.conf", "nameserver 10.0.0.2\n")
		}, false, "nameserver 10.0.0.2\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.setup(t, root)
			wrote, err := writeResolvConf(root, dns)
			if err != nil || wrote != tc.wrote {
				t.Fatalf("writeResolvConf = %v, %v; want %v", wrote, err, tc.wrote)
			}
			p := filepath.Join(root, "etc/resolv.conf")
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wrote && !fi.Mode().IsRegular() {
				t.Errorf("resolv.conf is %v, want a regular file", fi.Mode())
			}
			got, _ := os.ReadFile(p)
			w := tc.want
			if w == "" {
				w = want
			}
			if string(got) != w {
				t.Errorf("resolv.conf = %q, want %q", got, w)
			}
			if tc.name == "link to a stub" {
				if b, _ := os.ReadFile(filepath.Join(root, "run/stub.conf")); string(b) != "nameserver 127.0.0.53\n" {
					t.Errorf("the link's target was changed: %q", b)
				}
			}
			if left, _ := filepath.Glob(filepath.Join(root, "etc", "*.sailbox-agent")); len(left) > 0 {
				t.Errorf("left %v", left)
			}
		})
	}
}

func mkdir(t *testing.T, root, dir string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, root, name, content string) {
	t.Helper()
	mkdir(t, root, filepath.Dir(name))
	if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
