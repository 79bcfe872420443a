package kvmlab

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/u-root/u-root/pkg/cpio"
)

// writeInitramfs writes the lab's initramfs: the init binary, the modules
// to load in order, and the plan.
func writeInitramfs(out, initBinary string, modules []string, plan *Plan) error {
	records := []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1), // init's stdin/stdout before devtmpfs
		cpio.Directory("proc", 0o755),
		cpio.Directory("sys", 0o755),
		cpio.Directory("host", 0o755),
		cpio.Directory("tmp", 0o1777),
		cpio.Directory("modules", 0o755),
	}
	init, err := os.ReadFile(initBinary)
	if err != nil {
		return fmt.Errorf("lab initramfs: %w", err)
	}
	records = append(records, cpio.StaticFile("init", string(init), 0o755))
	for i, m := range modules {
		b, err := os.ReadFile(m)
		if err != nil {
			return fmt.Errorf("lab initramfs: %w", err)
		}
		name := fmt.Sprintf("modules/%03d-%s", i, filepath.Base(m))
		records = append(records, cpio.StaticFile(name, string(b), 0o644))
	}
	p, err := plan.encode()
	if err != nil {
		return fmt.Errorf("lab initramfs: plan: %w", err)
	}
	records = append(records, cpio.StaticFile("plan.json", string(p), 0o644))

	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("lab initramfs: %w", err)
	}
	w := cpio.Newc.Writer(f)
	if err := cpio.WriteRecordsAndDirs(w, records); err != nil {
		f.Close()
		return fmt.Errorf("lab initramfs %s: %w", out, err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		f.Close()
		return fmt.Errorf("lab initramfs %s: %w", out, err)
	}
	return f.Close()
}
