package guestagent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// defaultPath is the PATH of every process that exec starts unless the
// request sets one: that of Debian's and OCI runtimes' defaults.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// execEnv returns the environment of a process that exec starts: the
// default, PATH=defaultPath HOME=home TERM=dumb, with reqEnv, the
// request's "KEY=value" entries, added in order. os/exec keeps the last of
// duplicate keys, so the request's entries override the defaults. TERM is
// dumb because the process's output goes to pipes, not a terminal.
func execEnv(home string, reqEnv []string) []string {
	env := []string{"PATH=" + defaultPath, "HOME=" + home, "TERM=dumb"}
	return append(env, reqEnv...)
}

// command checks a's arguments and returns the command they describe, with
// its program resolved, and who it runs as: nil for the agent's own user.
// It fails with CodeBadRequest for invalid arguments and CodeExecFailed
// for a program that cannot be found or a user the guest does not know.
func (a *execArgs) command() (*exec.Cmd, *execUser, error) {
	if len(a.Argv) == 0 || a.Argv[0] == "" {
		return nil, nil, &Error{Code: CodeBadRequest, Message: "exec: empty argv"}
	}
	name := a.Argv[0]
	bad := func(format string, args ...any) error {
		return &Error{Code: CodeBadRequest, Message: fmt.Sprintf("exec %q: ", name) + fmt.Sprintf(format, args...)}
	}
	if a.Dir != "" && !filepath.IsAbs(a.Dir) {
		return nil, nil, bad("dir %q is not an absolute path", a.Dir)
	}
	if a.TimeoutMS < 0 {
		return nil, nil, bad("negative timeout_ms %d", a.TimeoutMS)
	}
	for _, kv := range a.Env {
		if strings.IndexByte(kv, '=') <= 0 {
			return nil, nil, bad("env entry %q is not KEY=value", kv)
		}
	}
	home := "/root"
	var user *execUser
	if a.User != "" {
		if _, _, err := splitUserSpec(a.User); err != nil {
			return nil, nil, bad("%v", err)
		}
		u, err := lookupUser("/", a.User)
		if err != nil {
			return nil, nil, &Error{Code: CodeExecFailed, Message: fmt.Sprintf("exec %q: %v", name, err)}
		}
		user, home = u, u.Home
	}
	env := execEnv(home, a.Env)
	path, err := lookPath(name, lastValue(env, "PATH"))
	if err != nil {
		return nil, nil, &Error{Code: CodeExecFailed, Message: fmt.Sprintf("exec %q: %v", name, err)}
	}
	return &exec.Cmd{Path: path, Args: a.Argv, Env: env, Dir: a.Dir}, user, nil
}

// lookupUser resolves spec, an ExecRequest.User, against root's
// /etc/passwd and /etc/group, root being "/" in the agent: the image's
// files when the box has one. A file that does not exist counts as empty.
func lookupUser(root, spec string) (*execUser, error) {
	var files [2]io.Reader
	for i, name := range []string{passwdFile, groupFile} {
		f, err := os.Open(filepath.Join(root, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", spec, err)
		}
		defer f.Close()
		files[i] = f
	}
	return resolveUser(spec, files[0], files[1])
}

// lastValue returns the value of the last entry for key in env, a list of
// "KEY=value" entries, or "" if there is none.
func lastValue(env []string, key string) string {
	for _, kv := range slices.Backward(env) {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// lookPath returns the program that file names, searching the directories
// of path (a PATH value) if file contains no slash. Unlike exec.LookPath it
// searches the process's PATH rather than the agent's, and it skips
// relative entries of path, which would be relative to a working directory
// chosen by the request. A name with a slash is returned as is: starting
// the process reports what is wrong with it.
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}
