package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// fakeBoot fails with failures[i] on its i-th call, then succeeds.
type fakeBoot struct {
	failures []error
	calls    int
}

func (f *fakeBoot) sample() error {
	f.calls++
	if f.calls <= len(f.failures) {
		return f.failures[f.calls-1]
	}
	return nil
}

var errHung = errors.New("agent not healthy: context deadline exceeded")

func TestRetryBootTakesABrokenSampleAgainAndSaysSo(t *testing.T) {
	res := &Results{}
	var log bytes.Buffer
	f := &fakeBoot{failures: []error{brokenBoot{errHung}}}
	if err := res.retryBoot(&log, "snapshots parent boot", f.sample); err != nil {
		t.Fatalf("retryBoot: %v", err)
	}
	if f.calls != 2 {
		t.Errorf("%d attempts, want 2", f.calls)
	}
	want := []Retry{{What: "snapshots parent boot", Attempt: 1, Error: "boot broke: " + errHung.Error()}}
	if len(res.Retries) != 1 || res.Retries[0] != want[0] {
		t.Errorf("retries = %+v, want %+v", res.Retries, want)
	}
	if !strings.Contains(log.String(), "snapshots parent boot: attempt 1 of 3") {
		t.Errorf("the retry was not said: %q", log.String())
	}
}

func TestRetryBootGivesUpAfterThreeAttempts(t *testing.T) {
	res := &Results{}
	f := &fakeBoot{failures: []error{brokenBoot{errHung}, brokenBoot{errHung}, brokenBoot{errHung}, nil}}
	err := res.retryBoot(&bytes.Buffer{}, "fork 3", f.sample)
	if err == nil || !errors.Is(err, errHung) {
		t.Fatalf("retryBoot = %v, want the last attempt's error", err)
	}
	if f.calls != bootAttempts {
		t.Errorf("%d attempts, want %d", f.calls, bootAttempts)
	}
	if len(res.Retries) != bootAttempts || !res.Retries[bootAttempts-1].GaveUp || res.Retries[0].GaveUp {
		t.Errorf("retries = %+v, want %d with the last one given up", res.Retries, bootAttempts)
	}
}

func TestRetryBootDoesNotRetryOtherFailures(t *testing.T) {
	res := &Results{}
	exec := errors.New("first exec: exit 1")
	f := &fakeBoot{failures: []error{exec}}
	if err := res.retryBoot(&bytes.Buffer{}, "restore 2", f.sample); !errors.Is(err, exec) {
		t.Fatalf("retryBoot = %v, want %v", err, exec)
	}
	if f.calls != 1 || len(res.Retries) != 0 {
		t.Errorf("%d attempts, retries %+v: a failure other than a broken boot was retried", f.calls, res.Retries)
	}
}

func TestBrokenBootSurvivesWrapping(t *testing.T) {
	// The image rows wrap it with the guest's console.
	err := (&tailBuffer{max: 64, b: []byte("Kernel panic")}).wrap(brokenBoot{errHung})
	var bb brokenBoot
	if !errors.As(err, &bb) {
		t.Errorf("%v is not a brokenBoot once wrapped", err)
	}
}
