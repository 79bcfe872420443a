package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// A lab crash ends the bench where it is, and the lab's runner starts it
// again in a fresh lab (internal/kvmlab). Rather than measure from the
// start each time, a bench started again resumes: it reads what it
// handed back in the crashed labs (their console logs, which the runner
// names in kvmtest.CrashedConsolesEnv; -resume), keeps the row groups
// measured to their end there, and measures only the others: a crash
// costs the group it cut short, not those before it. The results say
// which groups an earlier lab measured (Results.Resumed): ratios between
// those and the later ones cross labs.

// resume carries on in res the results that an earlier attempt at this
// run handed back in the outputs paths (separated by
// os.PathListSeparator; oldest first): its rows, ratios, retries, notes
// and the groups it finished, which this attempt then skips. An earlier
// attempt of another run (another commit or other flags) is not carried
// on. It says on w what it did.
func (res *Results) resume(paths string, w io.Writer) error {
	if paths == "" {
		return nil
	}
	var readers []io.Reader
	for _, p := range filepath.SplitList(paths) {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		defer f.Close()
		readers = append(readers, f, strings.NewReader("\n"))
	}
	earlier, err := readHandback(io.MultiReader(readers...))
	if errors.Is(err, errNoHandback) {
		res.note("resumed after a lab crash, but the crashed lab handed back no results: every group measured again")
		fmt.Fprintf(w, "resume: the crashed lab handed back no results; measuring every group\n")
		return nil
	}
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	if why := res.sameRun(earlier); why != "" {
		res.note("not resumed from the crashed lab's results: %s", why)
		fmt.Fprintf(w, "resume: the crashed lab's results are not this run's (%s); measuring every group\n", why)
		return nil
	}
	res.Started = earlier.Started
	res.Rows, res.Ratios, res.Retries = earlier.Rows, earlier.Ratios, earlier.Retries
	res.Notes = append(earlier.Notes, res.Notes...)
	res.Groups = earlier.Groups
	res.Resumed = slices.Clone(earlier.Groups)
	if len(res.Groups) > 0 {
		res.note("resumed after a lab crash: the %s rows were measured in an earlier lab of this run, which handed them back before it crashed", strings.Join(res.Groups, ", "))
	}
	fmt.Fprintf(w, "resume: the crashed lab handed back the %s rows; measuring the others\n", strings.Join(res.Groups, ", "))
	return nil
}

// sameRun is why earlier is not an earlier attempt at res's run, "" if it
// is: the same commit, quick or not, and the same flags (-resume aside,
// which names more crashed labs each time).
func (res *Results) sameRun(earlier *Results) string {
	if earlier.Commit != res.Commit {
		return fmt.Sprintf("commit %s, not %s", earlier.Commit, res.Commit)
	}
	same := func(a, b map[string]string) bool {
		a, b = maps.Clone(a), maps.Clone(b)
		delete(a, "resume")
		delete(b, "resume")
		return maps.Equal(a, b)
	}
	if earlier.Quick != res.Quick || !same(earlier.Flags, res.Flags) {
		return "other flags"
	}
	return ""
}
