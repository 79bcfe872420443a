package seccomp

import (
	"fmt"
	"os"
	"runtime"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
)

// Install confines every thread of this process, and every thread it
// starts later, to the VMM's allow-list, answering other calls as mode
// says; Off installs nothing. Call it once start-up is over, just before
// the guest runs: it cannot be undone, and what start-up alone does is
// not on the list. An error means the filter is not known to be whole on
// every thread (the kernel refused a program, or a thread lacks it);
// sailbox-vmm then does not run the guest, and -seccomp off is the way to
// run without a filter.
func Install(mode Mode) error {
	if err := mode.Validate(); err != nil {
		return err
	}
	if mode == Off {
		return nil
	}
	fs, err := filters(mode, os.Getpid())
	if err != nil {
		return err
	}
	// no_new_privs is set on the calling thread and TSYNC copies it to the
	// others, so both must happen on the same thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := filterCount("thread-self")
	if err != nil {
		return err
	}
	for i, f := range fs {
		if err := seccompbpf.LoadFilter(f); err != nil {
			return fmt.Errorf("seccomp: load filter %d of %d: %w", i+1, len(fs), err)
		}
	}
	// The library ignores seccomp(2)'s result, which under TSYNC is the ID
	// of a thread that could not be synchronized; look instead.
	want := -1
	if before >= 0 {
		want = before + len(fs)
	}
	return checkThreads(want)
}
