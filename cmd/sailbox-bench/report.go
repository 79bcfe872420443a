package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// runReport is `sailbox-bench report`: it finds a run's results in the
// run's captured output (handback.go) and writes them into a directory as
// results-<start time>[-quick].json, .md and -<plot>.png.
func runReport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sailbox-bench report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "-", "the bench run's captured output (`file`; - for stdin)")
	out := fs.String("out", "bench", "`dir` to write the results into")
	if err := fs.Parse(args); err != nil {
		return err
	}
	r := io.Reader(os.Stdin)
	if *in != "-" {
		f, err := os.Open(*in)
		if err != nil {
			return fmt.Errorf("report: %w", err)
		}
		defer f.Close()
		r = f
	}
	res, err := readHandback(r)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	host := thisMachine()
	res.Host = &host
	files, err := writeReport(res, *out)
	for _, f := range files {
		fmt.Fprintln(stdout, "wrote", f)
	}
	return err
}

// writeReport writes res into dir (made if need be) and returns the
// paths it wrote: the JSON, the plots, then the Markdown that shows them.
func writeReport(res *Results, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	base := filepath.Join(dir, "results-"+res.Started.UTC().Format("20060102T150405Z"))
	if res.Quick {
		base += "-quick"
	}
	var written []string
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	if err := os.WriteFile(base+".json", append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	written = append(written, base+".json")
	drawn := map[string]bool{}
	var errs []error
	for _, spec := range plots {
		path := filepath.Join(dir, plotFile(base, spec))
		ok, err := drawPlot(res, spec, path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			drawn[spec.name] = true
			written = append(written, path)
		}
	}
	if err := os.WriteFile(base+".md", []byte(markdown(res, base, drawn)), 0o644); err != nil {
		return written, fmt.Errorf("report: %w", err)
	}
	return append(written, base+".md"), errors.Join(errs...)
}

// markdown is res as a Markdown report: the rows' p50/p90/p99 and their
// ratios as the run recorded them, the retries, notes and plots.
func markdown(res *Results, base string, drawn map[string]bool) string {
	var b strings.Builder
	title := "sailbox-bench results, " + res.Started.UTC().Format("2006-01-02 15:04:05Z")
	if res.Quick {
		title += " (QUICK: a smoke test, few samples; not for comparison)"
	}
	fmt.Fprintf(&b, "# %s\n\n", title)
	where := "on the host"
	if res.Machine.InLab {
		where = "inside the KVM lab (nested KVM on emulated SVM: compare ratios, not times)"
	}
	fmt.Fprintf(&b, "- commit: `%s`\n", res.Commit)
	fmt.Fprintf(&b, "- ran %s: %s\n", where, machineLine(res.Machine))
	if res.Host != nil {
		fmt.Fprintf(&b, "- reported on: %s\n", machineLine(*res.Host))
	}
	for _, k := range sortedKeys(res.Peers) {
		fmt.Fprintf(&b, "- peer %s: %s\n", k, res.Peers[k])
	}
	var flags []string
	for _, k := range sortedKeys(res.Flags) {
		flags = append(flags, fmt.Sprintf("-%s=%s", k, res.Flags[k]))
	}
	fmt.Fprintf(&b, "- flags: `%s`\n", strings.Join(flags, " "))
	if len(res.Resumed) > 0 {
		fmt.Fprintf(&b, "- resumed: the lab crashed during the run; the %s rows were measured in a lab before the crash, the others in a fresh one (ratios between the two cross labs)\n", strings.Join(res.Resumed, ", "))
	}
	if res.Error != "" {
		fmt.Fprintf(&b, "\n**The run ended early**: %s. The rows below are those measured until then.\n", res.Error)
	}

	fmt.Fprintf(&b, "\n| row | n | p50 | p90 | p99 | unit | ratios of the p50s, same run |\n| --- | ---: | ---: | ---: | ---: | --- | --- |\n")
	for _, row := range res.Rows {
		if len(row.Samples) == 0 {
			continue
		}
		for _, part := range tableParts(row) {
			var ratios []string
			for _, q := range res.Ratios {
				// A ratio of the samples at one X goes on that X's line.
				if q.Num == row.ID && (q.NumX == nil || part.x != nil && *part.x == *q.NumX) {
					ratios = append(ratios, fmt.Sprintf("%.3f ÷ %s", q.Value, strings.Join(q.Den, " + ")))
				}
			}
			fmt.Fprintf(&b, "| %s `%s` | %d | %s | %s | %s | %s | %s |\n", part.label, row.ID, len(part.samples),
				number(percentile(part.samples, 0.5)), number(percentile(part.samples, 0.9)), number(percentile(part.samples, 0.99)),
				row.Unit, strings.Join(ratios, "; "))
		}
	}
	fmt.Fprintf(&b, "\npN is the sample at rank ⌊N/100 · n⌋ of the n sorted samples (p99 of fewer than 100 is the largest); every sample is in the JSON.\n")

	fmt.Fprintf(&b, "\n## Retried boots\n\n")
	if len(res.Retries) == 0 {
		fmt.Fprintf(&b, "None: no boot broke.\n")
	}
	for _, r := range res.Retries {
		end := "taken again"
		if r.GaveUp {
			end = "gave up: the run failed"
		}
		fmt.Fprintf(&b, "- %s, attempt %d of %d (%s): %s\n", r.What, r.Attempt, bootAttempts, end, oneLine(r.Error))
	}
	if len(res.Notes) > 0 {
		fmt.Fprintf(&b, "\n## Left out\n\n")
		for _, n := range res.Notes {
			fmt.Fprintf(&b, "- %s\n", oneLine(n))
		}
	}
	fmt.Fprintf(&b, "\n## Plots\n\n")
	for _, spec := range plots {
		if drawn[spec.name] {
			fmt.Fprintf(&b, "![%s](%s)\n\n", spec.title, plotFile(base, spec))
		} else {
			fmt.Fprintf(&b, "- %s: not drawn, the run measured none of its rows\n", spec.title)
		}
	}
	return b.String()
}

// tablePart is some of a row's samples, as one line of the table.
type tablePart struct {
	label   string
	x       *float64 // the X they were measured at, for a row split by X
	samples []float64
}

// tableParts splits a row measured at X values (the checkpoints' dirty
// MiB) into a line per value, in the order measured; a curve is one line,
// its last point; any other row is one line.
func tableParts(row Row) []tablePart {
	n := len(row.Samples)
	switch {
	case len(row.X) != n || n == 0:
		return []tablePart{{label: row.Label, samples: row.Samples}}
	case row.Curve:
		return []tablePart{{label: fmt.Sprintf("%s, at %g %s", row.Label, row.X[n-1], row.XUnit), samples: row.Samples[n-1:]}}
	}
	var xs []float64
	by := map[float64][]float64{}
	for i, x := range row.X {
		if _, ok := by[x]; !ok {
			xs = append(xs, x)
		}
		by[x] = append(by[x], row.Samples[i])
	}
	parts := make([]tablePart, len(xs))
	for i, x := range xs {
		parts[i] = tablePart{fmt.Sprintf("%s, at %g %s", row.Label, x, row.XUnit), &xs[i], by[x]}
	}
	return parts
}

func machineLine(m Machine) string {
	return fmt.Sprintf("%s, %d CPUs, %d MiB, Linux %s", m.CPUModel, m.CPUs, m.MemoryMiB, m.Kernel)
}

// number formats a sample or ratio with three or four significant digits.
func number(v float64) string {
	switch {
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1 || v <= -1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// oneLine keeps an error's first line (a guest console follows it).
func oneLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.ReplaceAll(line, "|", "\\|")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
