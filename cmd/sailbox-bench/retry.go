package main

import (
	"errors"
	"fmt"
	"io"
)

// bootAttempts bounds the attempts at one sample whose boot broke.
const bootAttempts = 3

// brokenBoot is a boot that never came up: its agent never answered
// within -timeout, or the guest stopped before it did. The KVM lab's
// emulated SVM does that now and then (a triple fault, a vCPU stuck in
// the host), so a sample that fails this way is taken again; any other
// failure ends the run.
type brokenBoot struct{ err error }

func (b brokenBoot) Error() string { return "boot broke: " + b.err.Error() }
func (b brokenBoot) Unwrap() error { return b.err }

// retryBoot runs sample, again while it fails with a brokenBoot, up to
// bootAttempts in all. Each failed attempt is recorded in r.Retries and
// said on log: never a silent retry.
func (r *Results) retryBoot(log io.Writer, what string, sample func() error) error {
	for attempt := 1; ; attempt++ {
		err := sample()
		var bb brokenBoot
		if err == nil || !errors.As(err, &bb) {
			return err
		}
		last := attempt == bootAttempts
		r.Retries = append(r.Retries, Retry{What: what, Attempt: attempt, Error: err.Error(), GaveUp: last})
		if last {
			return fmt.Errorf("%s: %d attempts: %w", what, attempt, err)
		}
		fmt.Fprintf(log, "%s: attempt %d of %d: %v; taking the sample again\n", what, attempt, bootAttempts, err)
	}
}
