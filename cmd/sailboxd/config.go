package main

// The configuration file (-config FILE) and the log format.
//
// The file holds flags, one per line, as `name = value`: the flag's name
// without its dash, then its value, as on the command line (booleans are
// true or false, -image-dir repeats):
//
//	# /etc/sailbox/sailboxd.conf
//	kernel    = /usr/local/lib/sailbox/bzImage
//	image-dir = /srv/sailbox/images
//	image-dir = /srv/sailbox/more-images
//	templates = false
//	cmdline   = "console=ttyS0 quiet"
//
// Blank lines and lines whose first non-blank character is # are skipped;
// a # elsewhere is part of the value. Space around the name and the value
// is trimmed; a value in double quotes is a Go string literal, for a value
// with leading or trailing space or an escape. A later line overrides an
// earlier one as a later flag does, and a repeatable flag adds. A flag
// given on the command line wins over every line naming it (for
// -image-dir, the command line's directories replace the file's); the
// file wins over environment defaults ($SAILBOX_GUEST_KERNEL). A line that
// is not `name = value`, a name that is no flag, and -config itself are
// errors naming the file and the line.

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
)

// applyConfigFile sets, from the file at path, every flag of fs that the
// command line did not set. An empty path is no file.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("-config: %w", err)
	}
	defer f.Close()
	onCommandLine := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { onCommandLine[fl.Name] = true })
	return parseConfig(f, path, func(line int, name, value string) error {
		fl := fs.Lookup(name)
		switch {
		case fl == nil:
			return fmt.Errorf("%s:%d: unknown setting %q: no sailboxd flag -%s (sailboxd -h lists them)", path, line, name, name)
		case name == "config":
			return fmt.Errorf("%s:%d: a configuration file cannot name another", path, line)
		case onCommandLine[name]:
			return nil
		}
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("%s:%d: %s = %s: %w", path, line, name, value, err)
		}
		return nil
	})
}

// parseConfig reads name = value lines from r (file names it in errors)
// and calls set for each, with its line number.
func parseConfig(r io.Reader, file string, set func(line int, name, value string) error) error {
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, value, ok := strings.Cut(text, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return fmt.Errorf("%s:%d: %q is not `name = value`", file, n, text)
		}
		if strings.HasPrefix(value, `"`) {
			v, err := strconv.Unquote(value)
			if err != nil {
				return fmt.Errorf("%s:%d: %s: a quoted value must be one Go string literal: %s", file, n, name, value)
			}
			value = v
		}
		if err := set(n, name, value); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

// logFormat is -log-format: how sailboxd writes its log.
type logFormat string

const (
	logText logFormat = "text" // slog's key=value lines
	logJSON logFormat = "json" // one JSON object a line, for journald or a collector
)

func (f logFormat) MarshalText() ([]byte, error) { return []byte(f), nil }

func (f *logFormat) UnmarshalText(b []byte) error {
	switch v := logFormat(b); v {
	case logText, logJSON:
		*f = v
		return nil
	}
	return fmt.Errorf("log format %q: want text or json", b)
}

// newLogger is the daemon's logger on w, in format, from level up.
func newLogger(w io.Writer, format logFormat, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == logJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
