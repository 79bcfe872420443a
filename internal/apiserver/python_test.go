package apiserver_test

import (
	"context"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
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

// TestPythonClientUpgrade: the Python client's upgrade() answers False for
// a sleeping box whose agent is older than the daemon's (the upgrade is
// recorded for its next wake) and True for a running one (rebooted onto
// it), as the API server over the fake backend answers them
// (clients/python/tests/e2e/upgrade_fake.py).
func TestPythonClientUpgrade(t *testing.T) {
	env := servertest.Start(t, nil)
	c := client.New(env.Socket)
	ctx := context.Background()
	asleep, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	running, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sleep(ctx, asleep.ID); err != nil {
		t.Fatal(err)
	}
	env.Fake.SetSchema(3) // the daemon's agent is newer than both boxes'
	pyclienttest.Run(t, "upgrade_fake.py", env.Socket, asleep.ID, running.ID)
}
