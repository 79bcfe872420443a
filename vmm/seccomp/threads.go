package seccomp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// threadStatus is one thread's seccomp state as /proc/<pid>/task/<tid>/status
// shows it.
type threadStatus struct {
	mode       string // "Seccomp": 0 none, 1 strict, 2 filter
	noNewPrivs string // "NoNewPrivs": 1 once set
	filters    int    // "Seccomp_filters" (Linux 5.9); -1 when the kernel does not say
}

func readStatus(path string) (threadStatus, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return threadStatus{}, err
	}
	st := threadStatus{filters: -1}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		v = strings.TrimSpace(v)
		switch k {
		case "Seccomp":
			st.mode = v
		case "NoNewPrivs":
			st.noNewPrivs = v
		case "Seccomp_filters":
			if st.filters, err = strconv.Atoi(v); err != nil {
				return st, fmt.Errorf("%s: Seccomp_filters %q", path, v)
			}
		}
	}
	if st.mode == "" {
		return st, fmt.Errorf("%s: no Seccomp line (a kernel without seccomp?)", path)
	}
	return st, nil
}

// filterCount is how many filters the thread /proc/<self> has (self:
// "thread-self", "self" or "self/task/<tid>"); -1 if the kernel does not
// say.
func filterCount(self string) (int, error) {
	st, err := readStatus("/proc/" + self + "/status")
	if err != nil {
		return 0, fmt.Errorf("seccomp: %w", err)
	}
	return st.filters, nil
}

// checkThreads verifies that every thread of this process is in filter
// mode with no_new_privs and, where the kernel counts them, at least
// want filters (want < 0: not checked).
func checkThreads(want int) error {
	tids, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("seccomp: list threads: %w", err)
	}
	for _, t := range tids {
		st, err := readStatus("/proc/self/task/" + t.Name() + "/status")
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread has exited
		}
		if err != nil {
			return fmt.Errorf("seccomp: %w", err)
		}
		if st.mode != "2" || st.noNewPrivs != "1" || (want >= 0 && st.filters >= 0 && st.filters < want) {
			return fmt.Errorf("seccomp: thread %s is not confined: Seccomp %s, NoNewPrivs %s, %d filters (want 2, 1, %d)",
				t.Name(), st.mode, st.noNewPrivs, st.filters, want)
		}
	}
	return nil
}
