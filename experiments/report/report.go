// Package report turns experiment directories (what experiments.Run writes) into a
// self-contained HTML report — ranked tables and ECharts charts, the ECharts bundle inlined
// from internal/echartsjs so the page loads nothing from the network — and a Markdown
// summary to paste into a pull request.
package report

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"servelab/experiments"
	"servelab/internal/atomicfile"
)

// Experiment is an experiment directory read for a report: its spec and results, and,
// loaded on first use and kept, its cells' time series and latencies.
type Experiment struct {
	// Dir is the experiment directory.
	Dir string
	// Spec is spec.yaml: the spec as it ran, defaults filled in.
	Spec experiments.Spec
	// Results is results.json.
	Results experiments.Results

	mu    sync.Mutex
	cells map[string]*cellData
}

// Load reads an experiment directory's results.json and spec.yaml. The cells' files are
// read when a report first needs them.
func Load(dir string) (*Experiment, error) {
	resultsPath := filepath.Join(dir, "results.json")
	if _, err := os.Stat(resultsPath); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: not an experiment directory: no results.json (has the experiment finished?)", dir)
	}
	res, err := experiments.ReadResults(dir)
	if err != nil {
		return nil, err
	}
	spec, err := experiments.ReadSpec(dir)
	if err != nil {
		return nil, err
	}
	if spec.Name == "" {
		spec.Name = res.Experiment
	}
	return &Experiment{Dir: dir, Spec: *spec, Results: *res, cells: map[string]*cellData{}}, nil
}

// Name is the experiment's name.
func (e *Experiment) Name() string { return e.Spec.Name }

// RateScales are the rate scales the results hold, ascending.
func (e *Experiment) RateScales() []float64 {
	var rates []float64
	for _, p := range e.Results.Policies {
		if !slices.Contains(rates, p.RateScale) {
			rates = append(rates, p.RateScale)
		}
	}
	slices.Sort(rates)
	return rates
}

// Write reads the experiment directory dir and writes dir/report.html and dir/report.md.
func Write(dir string) (htmlPath, mdPath string, err error) {
	exp, err := Load(dir)
	if err != nil {
		return "", "", err
	}
	return exp.WriteFiles(true)
}

// WriteFiles writes the report into the experiment directory: report.md, and report.html
// when withHTML (htmlPath is "" otherwise). Each file appears whole or not at all.
func (e *Experiment) WriteFiles(withHTML bool) (htmlPath, mdPath string, err error) {
	var md bytes.Buffer
	if err := WriteMarkdown(&md, e); err != nil {
		return "", "", err
	}
	if withHTML {
		var page bytes.Buffer
		if err := WriteHTML(&page, []*Experiment{e}); err != nil {
			return "", "", err
		}
		htmlPath = filepath.Join(e.Dir, "report.html")
		if err := atomicfile.Write(htmlPath, page.Bytes(), 0o644); err != nil {
			return "", "", err
		}
	}
	mdPath = filepath.Join(e.Dir, "report.md")
	if err := atomicfile.Write(mdPath, md.Bytes(), 0o644); err != nil {
		return "", "", err
	}
	return htmlPath, mdPath, nil
}
