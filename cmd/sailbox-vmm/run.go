package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// fileConfig is the JSON form of the flags (-config FILE).
type fileConfig struct {
	Kernel     string `json:"kernel"`
	Initrd     string `json:"initrd,omitempty"`
	Cmdline    string `json:"cmdline,omitempty"`
	MemoryMiB  int    `json:"memory_mib"`
	VCPUs      int    `json:"vcpus"`
	ConsoleLog string `json:"console_log,omitempty"`
	Console    bool   `json:"console,omitempty"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sailbox-vmm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfgPath = fs.String("config", "", "JSON config `file` (fields as the flags); flags given explicitly override it")
		c       fileConfig
	)
	fs.StringVar(&c.Kernel, "kernel", "", "guest kernel bzImage `path`")
	fs.StringVar(&c.Initrd, "initrd", "", "initramfs `path`")
	fs.StringVar(&c.Cmdline, "cmdline", "", "extra kernel command line")
	fs.IntVar(&c.MemoryMiB, "mem", 256, "guest memory in MiB")
	fs.IntVar(&c.VCPUs, "cpus", 1, "vCPUs")
	fs.StringVar(&c.ConsoleLog, "console-log", "", "append the guest console to this `file`")
	fs.BoolVar(&c.Console, "console", true, "copy the guest console to stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *cfgPath != "" {
		if err := loadConfig(*cfgPath, fs, &c); err != nil {
			return err
		}
	}
	if c.Kernel == "" {
		return errors.New("no kernel: give -kernel or \"kernel\" in -config")
	}

	var console []io.Writer
	if c.Console {
		console = append(console, stdout)
	}
	if c.ConsoleLog != "" {
		f, err := os.OpenFile(c.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("console log: %w", err)
		}
		defer f.Close()
		console = append(console, f)
	}

	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	defer sys.Close()
	m, err := vmm.New(sys, vmm.Config{
		KernelPath: c.Kernel,
		InitrdPath: c.Initrd,
		Cmdline:    c.Cmdline,
		MemoryMiB:  c.MemoryMiB,
		VCPUs:      c.VCPUs,
		Serial:     io.MultiWriter(console...),
	})
	if err != nil {
		return err
	}
	defer m.Close()
	exit, err := m.Run(ctx)
	if err != nil {
		return fmt.Errorf("vm stopped (%v): %w", exit, err)
	}
	fmt.Fprintf(stderr, "sailbox-vmm: guest %v\n", exit)
	return nil
}

// loadConfig reads a JSON config into c, keeping values of flags that were
// set explicitly on the command line. Unknown fields are an error.
func loadConfig(path string, fs *flag.FlagSet, c *fileConfig) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	explicit := *c
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	dec := json.NewDecoder(bytesReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	for name, dst := range map[string]any{
		"kernel": &c.Kernel, "initrd": &c.Initrd, "cmdline": &c.Cmdline, "mem": &c.MemoryMiB,
		"cpus": &c.VCPUs, "console-log": &c.ConsoleLog, "console": &c.Console,
	} {
		if !set[name] {
			continue
		}
		switch d := dst.(type) {
		case *string:
			*d = map[string]string{"kernel": explicit.Kernel, "initrd": explicit.Initrd, "cmdline": explicit.Cmdline, "console-log": explicit.ConsoleLog}[name]
		case *int:
			*d = map[string]int{"mem": explicit.MemoryMiB, "cpus": explicit.VCPUs}[name]
		case *bool:
			*d = explicit.Console
		}
	}
	return nil
}
