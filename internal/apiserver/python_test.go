package apiserver_test

import (
	"testing"

	"github.com/sailbox-dev/sailbox/internal/apiserver/servertest"
	"github.com/sailbox-dev/sailbox/internal/pyclienttest"
)

// TestPythonClient drives the API server over the fake backend with the
// Python client (clients/python): every call, as the script
// clients/python/tests/e2e/against_fake.py makes it, must answer as the
// daemon's contract says — so a change of the API that the Python client
// does not follow fails here.
func TestPythonClient(t *testing.T) {
	env := servertest.Start(t, nil)
	pyclienttest.Run(t, "against_fake.py", env.Socket)
	if n := env.Fake.RunningCount(); n != 0 {
		t.Errorf("%d VMs still run after the script terminated every box", n)
	}
}
