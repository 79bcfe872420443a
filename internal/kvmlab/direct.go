package kvmlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// RunDirect runs plan on this host, which has a usable /dev/kvm, with the
// same accounting as a lab run.
func RunDirect(ctx context.Context, plan *Plan, out io.Writer) (*Result, error) {
	res := newResult("host", len(plan.Steps))
	for i, s := range plan.Steps {
		res.step = i
		cmd := exec.CommandContext(ctx, s.Path, s.Args...)
		cmd.Dir = s.Dir
		cmd.Env = append(os.Environ(), s.Env...)
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := strings.TrimRight(sc.Text(), "\r")
				res.observe(line)
				fmt.Fprintln(out, line)
			}
			io.Copy(io.Discard, pr)
		}()
		err := cmd.Run()
		pw.Close()
		<-done
		var ee *exec.ExitError
		switch {
		case err == nil:
			res.Exit[i] = 0
		case errors.As(err, &ee):
			res.Exit[i] = ee.ExitCode()
		default:
			return res, fmt.Errorf("step %s: %w", s.Name, err)
		}
	}
	res.Done = true
	return res, nil
}
