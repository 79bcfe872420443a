package main

import (
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api/netapi"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sailboxd.conf")
	writeFile(t, p, []byte(text), 0o644)
	return p
}

func TestConfigFile(t *testing.T) {
	t.Setenv("SAILBOX_GUEST_KERNEL", "/from/env/bzImage")
	t.Setenv("SAILBOX_DEFAULT_IMAGE", "/from/env/rootfs.ext4")
	conf := writeConfig(t, `
# a comment
   # an indented comment
kernel    = /k/bzImage
initrd=/k/initramfs.cpio
image-dir = /srv/a
image-dir = /srv/b
templates = false
mem       = 512
mem       = 1024
cmdline   = "  console=ttyS0 # not a comment "
log-format = json
log-level = debug
host-id = h#1
net-host = files.lab=192.168.127.254
net-host = Mirror.Lab.=198.51.100.7
`)
	c, err := parseArgs([]string{"-config", conf}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Kernel != "/k/bzImage" || c.Initrd != "/k/initramfs.cpio" || c.Templates || c.MemoryMiB != 1024 ||
		c.Cmdline != "  console=ttyS0 # not a comment " || c.LogFormat != logJSON || c.LogLevel != slog.LevelDebug || c.HostID != "h#1" {
		t.Errorf("from the file: %+v", c)
	}
	if strings.Join(c.ImageDirs, ",") != "/srv/a,/srv/b" {
		t.Errorf("image dirs: %q", c.ImageDirs)
	}
	if want := map[string]netip.Addr{"files.lab": netapi.HostIP, "mirror.lab": netip.MustParseAddr("198.51.100.7")}; !maps.Equal(c.NetHosts, want) {
		t.Errorf("net hosts: %v, want %v", c.NetHosts, want)
	}

	// The command line wins, whichever side of -config it is on; its
	// -image-dir replaces the file's.
	c, err = parseArgs([]string{"-kernel", "/cli/bzImage", "-config", conf, "-image-dir", "/cli/images", "-templates"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Kernel != "/cli/bzImage" || !c.Templates || strings.Join(c.ImageDirs, ",") != "/cli/images" || c.Initrd != "/k/initramfs.cpio" {
		t.Errorf("command line over the file: %+v", c)
	}
	// -net-host too.
	c, err = parseArgs([]string{"-config", conf, "-net-host", "cli.lab=192.168.127.254"}, io.Discard)
	if err != nil || !maps.Equal(c.NetHosts, map[string]netip.Addr{"cli.lab": netapi.HostIP}) {
		t.Errorf("-net-host over the file: %v, %v", c.NetHosts, err)
	}
	// What neither says keeps its default; the environment's default
	// yields to the file.
	c, err = parseArgs([]string{"-config", writeConfig(t, "cpus = 2\n")}, io.Discard)
	if err != nil || c.Kernel != "/from/env/bzImage" || c.Image != "/from/env/rootfs.ext4" || c.VCPUs != 2 || c.MemoryMiB != 256 || c.LogFormat != logText {
		t.Errorf("defaults: %+v, %v", c, err)
	}
}

// Every flag can come from the file: for each one sailboxd -h lists, a
// line of the file gives the configuration the flag gives on the command
// line, and not the default one. A flag added without a value here fails.
func TestConfigFileEveryFlag(t *testing.T) {
	values := map[string]string{
		"cmdline":                 "console=ttyS0 quiet",
		"compact-after":           "3",
		"cpus":                    "4",
		"host-id":                 "rack-7",
		"image":                   "/srv/images/base.ext4",
		"image-dir":               "/srv/images",
		"inference-listen":        "127.0.0.1:8089",
		"inference-listen-public": "true",
		"inference-upstream":      "http://127.0.0.1:8000",
		"initrd":                  "/k/initramfs.cpio",
		"kernel":                  "/k/bzImage",
		"log-format":              "json",
		"log-level":               "warn",
		"max-memory":              "4096",
		"max-running":             "8",
		"mem":                     "1024",
		"metrics-listen":          "127.0.0.1:9464",
		"min-free-disk":           "512",
		"min-resumable-schema":    "2",
		"net-host":                "files.lab=192.168.127.254",
		"sailbox-net":             "/opt/sailbox/sailbox-net",
		"socket":                  "/run/sb/d.sock",
		"socket-group":            "sailbox",
		"state-dir":               "/srv/sailbox",
		"templates":               "false",
		"vmm":                     "/opt/sailbox/sailbox-vmm",
	}
	var usage strings.Builder
	if _, err := parseArgs([]string{"-h"}, &usage); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	var names []string
	for _, line := range strings.Split(usage.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "  -"); ok {
			names = append(names, strings.Fields(rest)[0])
		}
	}
	if len(names) < len(values) {
		t.Fatalf("sailboxd -h lists %d flags (%v), fewer than this test's %d", len(names), names, len(values))
	}
	defaults, err := parseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if name == "config" {
			continue // a file cannot name another (TestConfigFileErrors)
		}
		v, ok := values[name]
		if !ok {
			t.Errorf("-%s: no value in this test: add one, and check it can come from the file", name)
			continue
		}
		cli, err := parseArgs([]string{"-" + name + "=" + v}, io.Discard)
		if err != nil {
			t.Errorf("-%s=%s: %v", name, v, err)
			continue
		}
		file, err := parseArgs([]string{"-config", writeConfig(t, name+" = "+v+"\n")}, io.Discard)
		if err != nil {
			t.Errorf("%s = %s in the file: %v", name, v, err)
			continue
		}
		if !reflect.DeepEqual(file, cli) {
			t.Errorf("%s = %s: from the file %+v, from the command line %+v", name, v, file, cli)
		}
		if reflect.DeepEqual(file, defaults) {
			t.Errorf("%s = %s: the configuration is the default one", name, v)
		}
	}
}

func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"kernel = /k\nthis is not a setting\n", ":2: \"this is not a setting\" is not `name = value`"},
		{"kernel /k\n", ":1: "},
		{"= /k\n", ":1: "},
		{"\n\nkernal = /k\n", ":3: unknown setting \"kernal\""},
		{"mem = lots\n", ":1: mem = lots: "},
		{"templates = maybe\n", ":1: templates = maybe"},
		{"log-format = xml\n", ":1: log-format = xml: log format \"xml\": want text or json"},
		{"config = /etc/other.conf\n", ":1: a configuration file cannot name another"},
		{`cmdline = "unterminated` + "\n", ":1: cmdline: a quoted value"},
		{"max-running = -1\n", "cannot be negative"},
		{"image = rel.img\n", "-image \"rel.img\""},
		{"net-host = files.lab\n", ":1: net-host = files.lab: host \"files.lab\": want NAME=IPV4"},
		{"net-host = files.lab=127.0.0.1\n", "the host's 127.0.0.1 is 192.168.127.254"},
		{"net-host = files.lab=::1\n", "not an IPv4 address"},
		{"net-host = a.lab=192.168.127.254\nnet-host = A.lab=198.51.100.7\n", ":2: net-host = A.lab=198.51.100.7: host a.lab is 192.168.127.254 already"},
	} {
		conf := writeConfig(t, tc.text)
		_, err := parseArgs([]string{"-config", conf}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.text, err, tc.want)
			continue
		}
		if strings.Contains(tc.want, ":") && tc.want[0] == ':' && !strings.HasPrefix(err.Error(), conf+":") {
			t.Errorf("%q: %v does not name the file", tc.text, err)
		}
	}
	if _, err := parseArgs([]string{"-config", "/nonexistent.conf"}, io.Discard); err == nil || !strings.Contains(err.Error(), "/nonexistent.conf") {
		t.Errorf("a missing file: %v", err)
	}
}

// The example in contrib/ is a valid configuration.
func TestConfigFileExample(t *testing.T) {
	c, err := parseArgs([]string{"-config", "../../contrib/sailboxd.conf"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/var/lib/sailbox" || c.Socket != "/run/sailbox/sailboxd.sock" || c.SocketGroup != "sailbox" || c.LogFormat != logJSON || c.Limits.MinFreeDiskMiB != 1024 {
		t.Errorf("contrib/sailboxd.conf: %+v", c)
	}
}

func TestLogFormat(t *testing.T) {
	var b strings.Builder
	newLogger(&b, logJSON, slog.LevelInfo).Info("sailboxd listening", "socket", "/run/s.sock")
	var rec map[string]any
	if err := json.Unmarshal([]byte(b.String()), &rec); err != nil || rec["msg"] != "sailboxd listening" || rec["socket"] != "/run/s.sock" || rec["level"] != "INFO" {
		t.Errorf("json log %q: %v, %v", b.String(), rec, err)
	}
	b.Reset()
	newLogger(&b, logText, slog.LevelWarn).Info("hidden")
	newLogger(&b, logText, slog.LevelInfo).Info("shown", "k", "v")
	if got := b.String(); !strings.Contains(got, "msg=shown k=v") || strings.Contains(got, "hidden") {
		t.Errorf("text log %q", got)
	}
	for _, args := range [][]string{{"-log-format", "json"}, {"-log-format", "text"}, nil} {
		if _, err := parseArgs(args, io.Discard); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
	if _, err := parseArgs([]string{"-log-format", "xml"}, io.Discard); err == nil {
		t.Error("-log-format xml accepted")
	}
}

// The daemon logs JSON when asked: every line of its log is an object.
func TestRunLogsJSON(t *testing.T) {
	saved := newBackend
	t.Cleanup(func() { newBackend = saved })
	useFakeBackend()
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	logs := runBriefly(t, sock, "-state-dir", filepath.Join(dir, "state"), "-socket", sock, "-host-id", "h", "-log-format", "json")
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Errorf("not JSON: %q", l)
		}
	}
	if !strings.Contains(logs, `"msg":"sailboxd listening"`) {
		t.Errorf("logs:\n%s", logs)
	}
}

// The systemd unit in contrib/ runs sailboxd as the README installs it:
// a command line sailboxd accepts, reading the example configuration
// from where the README puts it; Type=notify (sailboxd sends READY=1,
// TestRunNotifiesReady); KillMode=process, so that boxes outlive the
// daemon; /dev/kvm allowed; and the example's state directory and socket
// in the directories the unit makes.
func TestSystemdUnit(t *testing.T) {
	text, err := os.ReadFile("../../contrib/systemd/sailboxd.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string][]string{} // Section.Key: values
	section := ""
	for _, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("not key=value: %q", line)
			}
			unit[section+"."+k] = append(unit[section+"."+k], v)
		}
	}
	one := func(key string) string {
		t.Helper()
		if vs := unit[key]; len(vs) == 1 {
			return vs[0]
		}
		t.Fatalf("%s: %q, want one value", key, unit[key])
		return ""
	}
	for key, want := range map[string]string{
		"Service.Type": "notify", "Service.NotifyAccess": "main", "Service.KillMode": "process",
		"Service.DeviceAllow": "/dev/kvm rw", "Install.WantedBy": "multi-user.target",
	} {
		if got := one(key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	const conf = "/etc/sailbox/sailboxd.conf"
	exec := strings.Fields(one("Service.ExecStart"))
	if len(exec) != 3 || filepath.Base(exec[0]) != "sailboxd" || exec[1] != "-config" || exec[2] != conf {
		t.Fatalf("ExecStart=%q, want sailboxd -config %s", exec, conf)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, install := range []string{
		"install -D -m 0644 contrib/sailboxd.conf " + conf,
		"install -m 0644 contrib/systemd/sailboxd.service /etc/systemd/system/",
		"install -m 0755 bin/sailboxd bin/sailbox-vmm bin/sailbox-net bin/sail " + filepath.Dir(exec[0]) + "/",
	} {
		if !strings.Contains(string(readme), install) {
			t.Errorf("the README's operator section does not say %q", install)
		}
	}
	// The unit's command line, on the example configuration.
	c, err := parseArgs([]string{"-config", "../../contrib/sailboxd.conf"}, io.Discard)
	if err != nil {
		t.Fatalf("sailboxd -config (the example): %v", err)
	}
	if dir := "/var/lib/" + one("Service.StateDirectory"); c.StateDir != dir {
		t.Errorf("the example's state-dir %s is not the unit's StateDirectory %s", c.StateDir, dir)
	}
	if dir := "/run/" + one("Service.RuntimeDirectory"); filepath.Dir(c.Socket) != dir {
		t.Errorf("the example's socket %s is not in the unit's RuntimeDirectory %s", c.Socket, dir)
	}
}
