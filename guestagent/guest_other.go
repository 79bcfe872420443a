//go:build !linux

package guestagent

import (
	"errors"
	"fmt"
	"log/slog"
)

// PrepareGuest fails on systems other than Linux: the agent runs in a Linux
// guest. It exists so that the agent's command builds everywhere.
func PrepareGuest(log *slog.Logger) error {
	return fmt.Errorf("prepare guest: %w", errors.ErrUnsupported)
}

// defaultGuestSystem returns nil: the restored op changes a Linux guest.
func defaultGuestSystem() guestSystem { return nil }

// MountRoot does nothing on systems other than Linux, which have no
// kernel command line to name a root: the agent runs in a Linux guest. It
// exists so that the agent's command builds everywhere.
func MountRoot(log *slog.Logger) error { return nil }

// ConfigureNetwork does nothing on systems other than Linux: the agent
// runs in a Linux guest. It exists so that the agent's command builds
// everywhere.
func ConfigureNetwork(log *slog.Logger) error { return nil }
