package kvmlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SoakResult is how each lab of a soak ended.
type SoakResult struct {
	Boots   int
	Crashed []string // per crashed lab: its number, why, and its console log
	Failed  []string // per lab that ran its plan to the end with a failure
}

// OK reports a soak in which every lab ran its plan and passed.
func (s *SoakResult) OK() bool { return len(s.Crashed) == 0 && len(s.Failed) == 0 }

// Summary is the closing line, in the form the CI reads: "soak: N passed,
// N failed" counts labs, and the crashes are named.
func (s *SoakResult) Summary() string {
	passed := s.Boots - len(s.Crashed) - len(s.Failed)
	line := fmt.Sprintf("soak: %d passed, %d failed", passed, len(s.Crashed)+len(s.Failed))
	if len(s.Crashed) > 0 {
		line += fmt.Sprintf("\nsoak: %d of %d labs crashed: %s", len(s.Crashed), s.Boots, strings.Join(s.Crashed, "; "))
	}
	if len(s.Failed) > 0 {
		line += fmt.Sprintf("\nsoak: %d of %d labs failed a test: %s", len(s.Failed), s.Boots, strings.Join(s.Failed, "; "))
	}
	return line
}

// Soak measures the lab's own stability: it boots n fresh labs one after
// another, each running plan, with no reruns and no retries, and keeps the
// console log of each lab that crashed or failed. make soak runs it.
func (r *Runner) Soak(ctx context.Context, plan *Plan, n int) (*SoakResult, error) {
	if r.Where == WhereHost {
		return nil, errors.New("kvmlab: a soak measures the lab; it runs in the lab only")
	}
	lab, err := r.newLab(ctx)
	if err != nil {
		return nil, err
	}
	soak := &SoakResult{Boots: n}
	for i := 1; i <= n; i++ {
		start := time.Now()
		res, err := lab.Run(ctx, plan)
		if err != nil {
			return nil, err
		}
		took := time.Since(start).Round(time.Second)
		outcome := "passed"
		if len(res.KernelFaults) > 0 {
			res.Crashed = true
			res.LabError = "the lab kernel reported: " + strings.Join(res.KernelFaults, " / ")
		}
		if res.Crashed || !res.OK() {
			log := filepath.Join(r.WorkDir, fmt.Sprintf("console-soak%d.log", i))
			if err := os.Rename(lab.ConsoleLog(), log); err != nil {
				log = lab.ConsoleLog()
			}
			what := fmt.Sprintf("lab %d: %s (console log %s)", i, strings.Join(res.Problems(plan), ", "), log)
			if res.Crashed {
				outcome = "CRASHED"
				soak.Crashed = append(soak.Crashed, what)
			} else {
				outcome = "FAILED"
				soak.Failed = append(soak.Failed, what)
			}
		}
		fmt.Fprintf(r.Log, "kvmlab: soak: lab %d of %d %s after %v (%d crashed so far)\n", i, n, outcome, took, len(soak.Crashed))
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return soak, nil
}
