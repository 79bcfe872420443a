// Package pyclienttest runs the Python client's end-to-end scripts
// (clients/python/tests/e2e) from Go tests, against a daemon the Go test
// started: the host tier's API server over the fake backend, and the kvm
// tier's real sailboxd.
//
// The interpreter is $SAILBOX_PYTHON, else /usr/bin/python3 (Debian's,
// which build/deps.sh installs; the KVM lab sees the host's root, so the
// same file runs there).
package pyclienttest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// PythonEnv names the interpreter to use.
const PythonEnv = "SAILBOX_PYTHON"

const defaultPython = "/usr/bin/python3"

// Python returns the interpreter, skipping the test when the default is
// missing (failing under `make test` and in the lab, and when
// $SAILBOX_PYTHON names one that does not run).
func Python(t testing.TB) string {
	t.Helper()
	py := os.Getenv(PythonEnv)
	named := py != ""
	if !named {
		py = defaultPython
	}
	if out, err := exec.Command(py, "-c", "import sys; assert sys.version_info >= (3, 11), sys.version").CombinedOutput(); err != nil {
		msg := fmt.Sprintf("python client: %s does not run Python >= 3.11 (%v: %s); build/deps.sh installs Debian's python3, or set %s", py, err, bytes.TrimSpace(out), PythonEnv)
		if named || os.Getenv(kvmtest.RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return py
}

// Script returns the path of the e2e script name, found from the test's
// working directory (its package's) up to the module's root.
func Script(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "clients", "python", "tests", "e2e", name)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("python client: no go.mod above %s", dir)
		}
		dir = parent
	}
}

// Run runs the e2e script name with args under the interpreter and fails
// the test, with everything the script printed, unless it exits 0. Its
// output is logged either way.
func Run(t testing.TB, name string, args ...string) {
	t.Helper()
	script := Script(t, name)
	run(t, name, append([]string{script}, args...), nil)
}

// SocketEnv is where Pytest tells a module the daemon's socket.
const SocketEnv = "SAILBOX_SOCKET"

// Pytest runs the e2e module name under pytest (Debian's python3-pytest,
// which build/deps.sh installs), $SAILBOX_SOCKET set to sock, and fails
// the test unless every test in it passes. pytest collects a module named
// on its command line whatever its name, so the unit tier's run of
// clients/python, which collects test_*.py, leaves the e2e modules out.
func Pytest(t testing.TB, name, sock string) {
	t.Helper()
	script := Script(t, name)
	run(t, name, []string{"-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", script}, []string{SocketEnv + "=" + sock})
}

func run(t testing.TB, name string, args, env []string) {
	t.Helper()
	py := Python(t)
	cmd := exec.Command(py, args...)
	// The checkout may be read-only (it is in the KVM lab).
	cmd.Env = append(append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s %s (%s):\n%s", filepath.Base(py), name, time.Since(start).Round(time.Millisecond), out.String())
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		t.Fatalf("python client: %s failed (%v); its output is above", name, err)
	case err != nil:
		t.Fatalf("python client: run %s: %v", name, err)
	}
}
