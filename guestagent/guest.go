package guestagent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
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

// validHostname reports whether name is a hostname the agent accepts: 1 to
// 64 (the kernel's limit) letters, digits, hyphens and dots, not starting
// with a hyphen or a dot.
func validHostname(name string) bool {
	if name == "" || len(name) > 64 || name[0] == '-' || name[0] == '.' {
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

// validMachineID reports whether id is a machine ID as machine-id(5)
// defines it: 32 lowercase hexadecimal digits, not all zero.
func validMachineID(id string) bool {
	if len(id) != 32 || id == strings.Repeat("0", 32) {
		return false
	}
	for i := range len(id) {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// randPoolInfoHeader is the size of struct rand_pool_info before its buf.
const randPoolInfoHeader = 8

// randPoolInfo encodes seed as the argument of the RNDADDENTROPY ioctl, a
// struct rand_pool_info of <linux/random.h>, crediting every bit of seed:
//
//	struct rand_pool_info {
//		int	entropy_count;	/* bits to credit */
//		int	buf_size;	/* bytes in buf */
//		__u32	buf[0];
//	};
//
// The kernel reads buf_size bytes of buf, not a whole number of words.
func randPoolInfo(seed []byte) []byte {
	b := make([]byte, randPoolInfoHeader+len(seed))
	binary.NativeEndian.PutUint32(b[0:], uint32(8*len(seed)))
	binary.NativeEndian.PutUint32(b[4:], uint32(len(seed)))
	copy(b[randPoolInfoHeader:], seed)
	return b
}

// replaceFile replaces the file at path with data, with permissions perm:
// it writes a temporary file in the same directory, syncs it and renames it
// over path, so that readers see the old contents or the new, never a mix
// or nothing. The temporary file is removed if anything fails.
func replaceFile(path string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".sailbox-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// writeMachineID replaces root/etc/machine-id with id, creating root/etc if
// need be. The file is read-only (0444), as systemd makes it.
func writeMachineID(root, id string) error {
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return fmt.Errorf("write machine-id: %w", err)
	}
	if err := replaceFile(filepath.Join(etc, "machine-id"), []byte(id+"\n"), 0o444); err != nil {
		return fmt.Errorf("write machine-id: %w", err)
	}
	return nil
}

// updateHostnameFile replaces root/etc/hostname with name, keeping the
// file's permissions, if the file exists; a guest without one takes its
// hostname from the kernel alone. It reports whether it replaced the file.
func updateHostnameFile(root, name string) (bool, error) {
	path := filepath.Join(root, "etc", "hostname")
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("update /etc/hostname: %w", err)
	}
	if err := replaceFile(path, []byte(name+"\n"), fi.Mode().Perm()); err != nil {
		return false, fmt.Errorf("update /etc/hostname: %w", err)
	}
	return true, nil
}

// ensureMachineID gives root/etc/machine-id a new random machine ID unless
// it holds a valid one: an image's is typically missing or empty (systemd
// fills it in at first boot), and a box needs one of its own. It reports
// whether it wrote one.
func ensureMachineID(root string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(root, "etc", "machine-id"))
	if err == nil && validMachineID(strings.TrimSpace(string(b))) {
		return false, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read machine-id: %w", err)
	}
	if err := writeMachineID(root, NewMachineID()); err != nil {
		return false, err
	}
	return true, nil
}
