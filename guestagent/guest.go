package guestagent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// defaultHostname is the guest's hostname unless the kernel command line
// sets one with sailbox.hostname=NAME.
const defaultHostname = "sailbox"

// hostnameParam is the kernel command line parameter that names the guest.
const hostnameParam = "sailbox.hostname"

// hostnameFromCmdline returns the hostname that cmdline, a kernel command
// line as in /proc/cmdline, sets with sailbox.hostname=NAME; the last such
// parameter wins. It returns defaultHostname if there is none, or an empty
// one, and defaultHostname with an error if the name is not a valid
// hostname: 1 to 64 letters, digits, hyphens and dots. Quoted values are
// not supported.
func hostnameFromCmdline(cmdline string) (string, error) {
	name := ""
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, hostnameParam+"="); ok {
			name = v
		}
	}
	if name == "" {
		return defaultHostname, nil
	}
	if !validHostname(name) {
		return defaultHostname, fmt.Errorf("kernel command line: invalid %s %q", hostnameParam, name)
	}
	return name, nil
}

func validHostname(name string) bool {
	if len(name) > 64 || name[0] == '-' || name[0] == '.' {
		return false
	}
	for _, r := range name {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// isMountPoint reports whether mounts, a mount table in the format of
// /proc/mounts, has a file system mounted on dir.
func isMountPoint(mounts, dir string) bool {
	for line := range strings.Lines(mounts) {
		// device mount-point type options dump pass, with spaces, tabs,
		// newlines and backslashes in names escaped in octal.
		f := strings.Fields(line)
		if len(f) >= 2 && unescapeMountField(f[1]) == dir {
			return true
		}
	}
	return false
}

// unescapeMountField undoes the kernel's octal escapes (\040 for a space
// and so on) in a field of /proc/mounts.
func unescapeMountField(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// installBusybox gives binDir the usual commands, as symbolic links to
// binDir/busybox, if it has a busybox but no sh. It reports whether it
// installed them.
func installBusybox(binDir string) (bool, error) {
	if _, err := os.Stat(filepath.Join(binDir, "sh")); err == nil {
		return false, nil
	}
	bb := filepath.Join(binDir, "busybox")
	if _, err := os.Stat(bb); err != nil {
		return false, nil
	}
	out, err := exec.Command(bb, "--install", "-s", binDir).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("%s --install -s %s: %v: %s", bb, binDir, err, strings.TrimSpace(string(out)))
	}
	return true, nil
}
