package vmm_test

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/guestagent"
)

// The VMM hands the kernel pointers into Go memory (ioctl arguments,
// vsock and block buffers) and reads guest memory through mmap'ed views.
// Under constant garbage collection (GOGC 1: a collection, and stack
// shrinking, after every few allocations) a pointer the runtime does not
// know the kernel holds would be freed or moved under it: a guest's exec,
// a checkpoint and a fork, each with execs running side by side, still go
// exactly. sailbox-vmm runs at a low GOGC (cmd/sailbox-vmm/gc.go).
func TestKVMUnderConstantGC(t *testing.T) {
	old := debug.SetGCPercent(1)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	b := bootBox(t)
	execs := func(g *guest, who string) {
		var wg sync.WaitGroup
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					want := fmt.Sprintf("%s-%d-%d", who, w, i)
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					out, errOut, code, err := g.agent.Run(ctx, "echo", want)
					cancel()
					if err != nil || code != 0 || string(out) != want+"\n" {
						t.Errorf("%s: echo %s: %q, exit %d, %v: %s", who, want, out, code, err, errOut)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	execs(b.guest, "parent")
	b.sh(t, mountVDA+" && head -c 4194304 /dev/urandom > /mnt/data && sha256sum /mnt/data > /tmp/sum && sync")
	checkpoint(t, b, b.guest, "gc1")
	args, err := guestagent.ForkArgs("gcchild")
	if err != nil {
		t.Fatal(err)
	}
	child := restoreAs(t, b, "gc1", args)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); execs(b.guest, "parent") }()
	go func() { defer wg.Done(); execs(child, "child") }()
	wg.Wait()
	for _, g := range []*guest{b.guest, child} {
		if out := g.sh(t, mountVDA+" 2>/dev/null; echo 3 > /proc/sys/vm/drop_caches; sha256sum -c /tmp/sum"); out != "/mnt/data: OK\n" {
			t.Errorf("the disk's data after checkpoint and fork: %q", out)
		}
	}
}
