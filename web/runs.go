package web

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"servelab/experiments"
)

// RunInfo is one experiment directory under the runs directory.
type RunInfo struct {
	// ID is the directory's path under the runs directory, with forward slashes.
	ID         string `json:"id"`
	Experiment string `json:"experiment"`
	Dir        string `json:"dir"`
	// Status is new, running, done, failed (cells failed, or the run could not start) or
	// interrupted (its events stopped without experiment_done).
	Status      string    `json:"status"`
	Cells       int       `json:"cells"`
	DoneCells   int       `json:"done_cells"`
	FailedCells int       `json:"failed_cells"`
	Progress    float64   `json:"progress"`
	ModTime     time.Time `json:"mod_time"`
	// InProcess marks a run this dashboard started (others are followed through their
	// events.jsonl).
	InProcess bool `json:"in_process,omitempty"`
	// Error is why the run failed to start, or why its spec does not load.
	Error string `json:"error,omitempty"`
	// PrefixHashes is whether the workload carries prefix hash ids, as the run's
	// experiment_start event said; absent when none did.
	PrefixHashes *bool `json:"prefix_hashes,omitempty"`
}

// CellInfo is one cell of a run with its status.
type CellInfo struct {
	experiments.Cell
	Status   string  `json:"status"`
	Progress float64 `json:"progress"`
	Error    string  `json:"error,omitempty"`
}

// Experiment is the runs of one experiment name, newest first.
type Experiment struct {
	Name string    `json:"name"`
	Runs []RunInfo `json:"runs"`
}

// staleAfter is how long a run's events.jsonl may stay unchanged, without experiment_done,
// before the run counts as interrupted rather than running.
const staleAfter = 30 * time.Second

// maxDepth is how deep under the runs directory experiment directories are looked for.
const maxDepth = 3

// catalog tracks the experiment directories under a runs directory: their specs (cached by
// modification time) and a samples-free state of each, kept up to date by tailing its
// events.jsonl incrementally.
type catalog struct {
	root string

	mu   sync.Mutex
	runs map[string]*runEntry
}

type runEntry struct {
	id, dir string
	specMod time.Time
	name    string
	cells   []experiments.Cell
	specErr error
	st      *runState
	tail    *tail
}

func newCatalog(root string) *catalog {
	return &catalog{root: root, runs: map[string]*runEntry{}}
}

// dirOf is the directory of a run id, or an error when the id names no experiment
// directory under the root.
func (c *catalog) dirOf(id string) (string, error) {
	rel := filepath.FromSlash(id)
	if id == "" || !filepath.IsLocal(rel) || strings.Contains(id, "\\") {
		return "", fmt.Errorf("no run %q", id)
	}
	dir := filepath.Join(c.root, rel)
	if !fileExists(filepath.Join(dir, "spec.yaml")) {
		return "", fmt.Errorf("no run %q under %s", id, c.root)
	}
	return dir, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// ids lists the experiment directories: any directory with a spec.yaml, up to maxDepth
// below the root (not below an experiment directory, nor in hidden ones).
func (c *catalog) ids() ([]string, error) {
	var ids []string
	err := filepath.WalkDir(c.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == c.root {
				return err
			}
			return nil // unreadable subdirectory
		}
		if !d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(c.root, path)
		if rel != "." && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if rel != "." && fileExists(filepath.Join(path, "spec.yaml")) {
			ids = append(ids, filepath.ToSlash(rel))
			return filepath.SkipDir
		}
		if strings.Count(filepath.ToSlash(rel), "/") >= maxDepth-1 {
			return filepath.SkipDir
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return ids, err
}

// entry is the run's entry, with its spec reloaded if it changed and its new events read.
func (c *catalog) entry(id string) (*runEntry, error) {
	dir, err := c.dirOf(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.runs[id]
	specPath := filepath.Join(dir, "spec.yaml")
	st, err := os.Stat(specPath)
	if err != nil {
		return nil, err
	}
	if e == nil || !st.ModTime().Equal(e.specMod) {
		e = &runEntry{id: id, dir: dir, specMod: st.ModTime()}
		if spec, err := experiments.ReadSpec(dir); err != nil {
			e.specErr = err
		} else {
			e.name, e.cells = spec.Name, spec.Cells()
		}
		if e.name == "" {
			e.name = filepath.Base(dir)
		}
		e.st = newRunState(e.cells, 0)
		e.tail = newTail(filepath.Join(dir, "events.jsonl"))
		c.runs[id] = e
	}
	if err := e.tail.read(func(ev experiments.Event) { e.st.apply(ev) }); err == errTruncated {
		e.tail.rewind()
		e.st = newRunState(e.cells, 0)
		e.tail.read(func(ev experiments.Event) { e.st.apply(ev) })
	}
	return e, nil
}

// forget drops the entries of runs not in ids (directories removed).
func (c *catalog) forget(ids []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.runs {
		if !slices.Contains(ids, id) {
			delete(c.runs, id)
		}
	}
}

// info describes the run; running says whether this process runs it.
func (c *catalog) info(id string, running bool, jobErr error) (RunInfo, []CellInfo, error) {
	e, err := c.entry(id)
	if err != nil {
		return RunInfo{}, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	info := RunInfo{ID: id, Experiment: e.name, Dir: e.dir, Status: e.st.status, InProcess: running,
		PrefixHashes: e.st.prefixHashes}
	if e.specErr != nil {
		info.Error = "spec.yaml: " + e.specErr.Error()
	}
	info.ModTime = e.specMod
	eventsMod := time.Time{}
	for _, f := range []string{"events.jsonl", "results.json"} {
		if st, err := os.Stat(filepath.Join(e.dir, f)); err == nil {
			if st.ModTime().After(info.ModTime) {
				info.ModTime = st.ModTime()
			}
			if f == "events.jsonl" {
				eventsMod = st.ModTime()
			}
		}
	}
	cells := make([]CellInfo, len(e.st.cells))
	for i, cs := range e.st.cells {
		cells[i] = CellInfo{Cell: cs.Cell, Status: cs.status, Progress: cs.progress, Error: cs.err}
	}
	info.Cells = len(cells)
	info.DoneCells, info.FailedCells = e.st.counts()
	info.Progress = e.st.progress()
	switch {
	case running:
		info.Status = StatusRunning
	case jobErr != nil && info.Status != StatusDone && info.Status != StatusFailed:
		info.Status, info.Error = StatusFailed, jobErr.Error()
	case info.Status == StatusRunning && time.Since(eventsMod) > staleAfter:
		info.Status = StatusInterrupted
	case info.Status == StatusNew:
		// No events (a directory written by an older servelab): results.json decides.
		if res, err := experiments.ReadResults(e.dir); err == nil {
			info.Status, info.PrefixHashes = StatusDone, res.PrefixHashes
			if len(cells) == 0 {
				info.Cells = len(res.Cells)
			}
			info.DoneCells, info.FailedCells = 0, 0
			for _, r := range res.Cells {
				if r.Status == "done" {
					info.DoneCells++
				} else {
					info.FailedCells++
				}
			}
			if info.FailedCells > 0 {
				info.Status = StatusFailed
			}
			info.Progress = 1
		}
	}
	if jobErr != nil && info.Error == "" && info.Status == StatusFailed {
		info.Error = jobErr.Error()
	}
	return info, cells, nil
}

// group sorts runs into experiments by name (alphabetical), newest run first.
func group(runs []RunInfo) []Experiment {
	byName := map[string]int{}
	var out []Experiment
	for _, r := range runs {
		i, ok := byName[r.Experiment]
		if !ok {
			i = len(out)
			byName[r.Experiment] = i
			out = append(out, Experiment{Name: r.Experiment})
		}
		out[i].Runs = append(out[i].Runs, r)
	}
	slices.SortFunc(out, func(a, b Experiment) int { return strings.Compare(a.Name, b.Name) })
	for _, e := range out {
		slices.SortStableFunc(e.Runs, func(a, b RunInfo) int {
			if c := b.ModTime.Compare(a.ModTime); c != 0 {
				return c
			}
			return strings.Compare(a.ID, b.ID)
		})
	}
	return out
}
