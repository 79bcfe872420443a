package main

import (
	"fmt"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotSpec is one PNG of the report: paired rows drawn as points
// (against their X, joined if a curve; a legend if more than one), or
// rows' samples drawn as box plots side by side.
// Only rows the run measured are drawn; a plot none of whose rows were
// measured is left out, and the Markdown says so.
type plotSpec struct {
	name   string // the file's suffix: results-<time>-<name>.png
	title  string
	paired []string // rows with X: points of their samples against X
	boxes  []string // rows: a box plot of each one's samples
}

// plots are the report's plots, in its order.
var plots = []plotSpec{
	{name: "pause", title: "checkpoint pause against MiB dirtied since the last", paired: []string{"checkpoint.pause"}},
	{name: "latency", title: "restore and fork to first exec, without and with a working set mapped ahead", boxes: []string{
		"restore.cold", "restore.ws", "fork.cold", "fork.ws", "fork.family",
		"density.fork", "image.create.cold", "image.create.ws", "image.pyfork.cold", "image.pyfork.ws",
	}},
	{name: "fork-memory", title: "host memory against forks running", paired: []string{"density.host.curve", "density.pss.curve", "forks.private"}},
}

// drawPlot writes spec's plot of res to path. It reports false, writing
// nothing, if res has none of spec's rows.
func drawPlot(res *Results, spec plotSpec, path string) (bool, error) {
	p := plot.New()
	p.Title.Text = spec.title
	width := 480.0
	if len(spec.paired) > 0 {
		var drawn []*Row
		for _, id := range spec.paired {
			if row, ok := res.rowByID(id); ok && len(row.X) == len(row.Samples) {
				drawn = append(drawn, row)
			}
		}
		if len(drawn) == 0 {
			return false, nil
		}
		for i, row := range drawn {
			xys := make(plotter.XYs, len(row.Samples))
			for j := range row.Samples {
				xys[j] = plotter.XY{X: row.X[j], Y: row.Samples[j]}
			}
			p.X.Label.Text, p.Y.Label.Text = row.XUnit, row.Unit
			s, err := plotter.NewScatter(xys)
			if err != nil {
				return false, fmt.Errorf("plot %s: %w", spec.name, err)
			}
			s.GlyphStyle.Color = plotutil.Color(i)
			s.GlyphStyle.Shape = plotutil.Shape(i)
			p.Add(s)
			if row.Curve {
				l, err := plotter.NewLine(xys)
				if err != nil {
					return false, fmt.Errorf("plot %s: %w", spec.name, err)
				}
				l.Color = plotutil.Color(i)
				p.Add(l)
			}
			if len(drawn) > 1 {
				p.Legend.Add(row.ID, s)
			}
		}
		p.Legend.Top, p.Legend.Left = true, true
		p.Add(plotter.NewGrid())
	} else {
		var names []string
		for _, id := range spec.boxes {
			row, ok := res.rowByID(id)
			if !ok {
				continue
			}
			b, err := plotter.NewBoxPlot(vg.Points(20), float64(len(names)), plotter.Values(row.Samples))
			if err != nil {
				return false, fmt.Errorf("plot %s: %s: %w", spec.name, id, err)
			}
			p.Add(b)
			names = append(names, id)
			p.Y.Label.Text = row.Unit
		}
		if len(names) == 0 {
			return false, nil
		}
		p.NominalX(names...)
		p.Add(plotter.NewGrid())
		p.X.Min, p.X.Max = -0.5, float64(len(names))-0.5
		width = max(width, 100*float64(len(names)))
	}
	// From zero, with room above: a plot of times that starts at the
	// lowest sample exaggerates their spread.
	p.Y.Min, p.Y.Max = 0, p.Y.Max*1.08
	p.X.Max += (p.X.Max - p.X.Min) * 0.03
	w, err := p.WriterTo(vg.Points(width), vg.Points(320), "png")
	if err != nil {
		return false, fmt.Errorf("plot %s: %w", spec.name, err)
	}
	f, err := os.Create(path)
	if err != nil {
		return false, fmt.Errorf("plot %s: %w", spec.name, err)
	}
	if _, err := w.WriteTo(f); err != nil {
		f.Close()
		return false, fmt.Errorf("plot %s: write %s: %w", spec.name, path, err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("plot %s: %w", spec.name, err)
	}
	return true, nil
}

// plotFile is spec's file name beside the report's base name.
func plotFile(base string, spec plotSpec) string {
	return filepath.Base(base) + "-" + spec.name + ".png"
}
