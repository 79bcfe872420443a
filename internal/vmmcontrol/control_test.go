package vmmcontrol

import (
	"reflect"
	"testing"
	"time"

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
