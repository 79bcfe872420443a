package guestagent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// defaultEnv is the environment of every process that exec starts, before
// the request's Env is added.
var defaultEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=dumb"}

// command checks a's arguments and returns the command they describe, with
// its program resolved. It fails with CodeBadRequest for invalid arguments
// and CodeExecFailed for a program that cannot be found.
func (a *execArgs) command() (*exec.Cmd, error) {
	if len(a.Argv) == 0 || a.Argv[0] == "" {
		return nil, &Error{Code: CodeBadRequest, Message: "exec: empty argv"}
	}
	name := a.Argv[0]
	bad := func(format string, args ...any) error {
		return &Error{Code: CodeBadRequest, Message: fmt.Sprintf("exec %q: ", name) + fmt.Sprintf(format, args...)}
	}
	if a.Dir != "" && !filepath.IsAbs(a.Dir) {
		return nil, bad("dir %q is not an absolute path", a.Dir)
	}
	if a.TimeoutMS < 0 {
		return nil, bad("negative timeout_ms %d", a.TimeoutMS)
	}
	for _, kv := range a.Env {
		if strings.IndexByte(kv, '=') <= 0 {
			return nil, bad("env entry %q is not KEY=value", kv)
		}
	}
	// os/exec keeps the last of duplicate keys, so the request's entries
	// override the defaults.
	env := append(slices.Clone(defaultEnv), a.Env...)
	path, err := lookPath(name, lastValue(env, "PATH"))
	if err != nil {
		return nil, &Error{Code: CodeExecFailed, Message: fmt.Sprintf("exec %q: %v", name, err)}
	}
	return &exec.Cmd{Path: path, Args: a.Argv, Env: env, Dir: a.Dir}, nil
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
