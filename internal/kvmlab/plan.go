package kvmlab

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Plan is what the lab's init runs, in order.
type Plan struct {
	Steps []Step `json:"steps"`
}

// Step is one program to run on real KVM. Paths are host paths; in the lab
// the host's root is shared read-only and each step is chrooted into it.
type Step struct {
	Name string   `json:"name"`
	Path string   `json:"path"`
	Args []string `json:"args,omitempty"`
	Env  []string `json:"env,omitempty"` // added to a minimal PATH/HOME/TMPDIR
	Dir  string   `json:"dir,omitempty"`
}

// Marker lines, printed by the lab's init on the console, carry results to
// the host. They start at the beginning of a line and are unlikely in
// program output.
const (
	markerPrefix = "@@kvmlab "
	markerStep   = markerPrefix + "step "  // "@@kvmlab step <index> exit <code>"
	markerDone   = markerPrefix + "done"   // all steps ran
	markerError  = markerPrefix + "error " // the lab itself failed: "<message>"
	markerReady  = markerPrefix + "ready " // "/dev/kvm ready after <uptime>"
	// markerAlive is the init's heartbeat, every heartbeatInterval while
	// steps run: a console silent for longer means the lab kernel itself
	// is stuck, not a quiet test.
	markerAlive = markerPrefix + "alive"
)

const heartbeatInterval = time.Minute

func stepMarker(i, code int) string {
	return fmt.Sprintf("%s%d exit %d", markerStep, i, code)
}

// parseStepMarker parses a step marker line.
func parseStepMarker(line string) (index, code int, ok bool) {
	rest, found := strings.CutPrefix(line, markerStep)
	if !found {
		return 0, 0, false
	}
	f := strings.Fields(rest)
	if len(f) != 3 || f[1] != "exit" {
		return 0, 0, false
	}
	i, err1 := strconv.Atoi(f[0])
	c, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return i, c, true
}

func (p *Plan) encode() ([]byte, error) {
	return json.MarshalIndent(p, "", "  ")
}

func decodePlan(b []byte) (*Plan, error) {
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decode lab plan: %w", err)
	}
	for i, s := range p.Steps {
		if s.Path == "" {
			return nil, fmt.Errorf("lab plan step %d (%q): no path", i, s.Name)
		}
	}
	return &p, nil
}
