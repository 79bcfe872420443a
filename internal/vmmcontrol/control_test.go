package vmmcontrol

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	virtionet "github.com/sailbox-dev/sailbox/devices/virtio/net"
	"github.com/sailbox-dev/sailbox/vmm"
)

// The control API reports every part of a checkpoint's pause, each once:
// parts of distinct powers of two sum to the same total.
func TestPausePartsReported(t *testing.T) {
	var p vmm.PauseParts
	v := reflect.ValueOf(&p).Elem()
	for i := range v.NumField() {
		v.Field(i).SetInt(int64(time.Microsecond) << i)
	}
	got := pauseParts(p)
	g := reflect.ValueOf(got).Elem()
	var sum int64
	for i := range g.NumField() {
		sum += g.Field(i).Int()
	}
	if g.NumField() != v.NumField() || time.Duration(sum) != p.Sum() || got.CopyNanos != p.Copy.Nanoseconds() || got.DiskSwitchNanos != p.DiskSwitch.Nanoseconds() {
		t.Errorf("reported %+v (sum %d ns) for %+v (sum %v)", got, sum, p, p.Sum())
	}
}

// The control API reports every count of what a restore mapped ahead.
func TestMappedAheadReported(t *testing.T) {
	w := vmm.MappedAhead{From: "tpl-1", Pages: 3000, Copied: 400, Entered: 2999}
	got := mappedAhead(w)
	if n, m := reflect.TypeOf(w).NumField(), reflect.TypeOf(*got).NumField(); n != m ||
		*got != (vmmapi.MappedAhead{From: "tpl-1", Pages: 3000, Copied: 400, Entered: 2999}) {
		t.Errorf("reported %+v (%d fields) for %+v (%d fields)", *got, m, w, n)
	}
}

// A restored guest's fix-ups end without a word when the VM stops
// (ctx cancelled), so that the VMM's exit line stays its log's last, and
// with an error when the agent never answers.
func TestFixUpRestoredGuestQuietWhenStopped(t *testing.T) {
	launch := vmmapi.Launch{VsockUDS: filepath.Join(t.TempDir(), "none.sock"), Restore: "c1"}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	FixUpRestoredGuest(ctx, launch, log)
	if buf.Len() != 0 {
		t.Errorf("stopped VM: logged %q", buf.String())
	}
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	FixUpRestoredGuest(ctx, launch, log)
	if !strings.Contains(buf.String(), "agent not reachable") {
		t.Errorf("agent never answered: logged %q", buf.String())
	}
}

// The control API reports every counter of the network device, each
// once and in its direction: the device's transmit side is the guest's
// out.
func TestNetworkStatsReported(t *testing.T) {
	var s virtionet.Stats
	v := reflect.ValueOf(&s).Elem()
	for i := range v.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Bool {
			f.SetBool(true)
		} else {
			f.SetUint(1 << i)
		}
	}
	got := networkStats(s)
	g := reflect.ValueOf(got).Elem()
	var sum, want uint64
	for i := range g.NumField() {
		if f := g.Field(i); f.Kind() != reflect.Bool {
			sum += f.Uint()
		}
	}
	for i := range v.NumField() {
		if v.Field(i).Kind() != reflect.Bool {
			want += v.Field(i).Uint()
		}
	}
	if g.NumField() != v.NumField() || sum != want || !got.PeerGone ||
		got.FramesOut != s.TxFrames || got.BytesOut != s.TxBytes || got.DroppedOut != s.TxDropped ||
		got.FramesIn != s.RxFrames || got.BytesIn != s.RxBytes || got.InvalidIn != s.RxInvalid {
		t.Errorf("reported %+v for %+v", got, s)
	}
}
