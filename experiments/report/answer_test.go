package report

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/experiments"
	"servelab/metrics"
)

// The report leads with the answer: the winner and by how much, then the charts, then the
// tables; the title is said once.
func TestReportLeadsWithTheAnswer(t *testing.T) {
	for _, name := range []string{"matrix", "sweep"} {
		t.Run(name, func(t *testing.T) {
			e := load(t, name)
			page := renderHTML(t, e)
			answer, chart, table := strings.Index(page, `<ul class="verdicts">`), strings.Index(page, `<div class="chart"`), strings.Index(page, `<table class="ranked"`)
			if answer < 0 || chart < 0 || table < 0 || !(answer < chart && chart < table) {
				t.Errorf("answer at %d, first chart at %d, first table at %d: want the answer, then charts, then tables", answer, chart, table)
			}
			if n := strings.Count(page, ">"+e.Name()+"<"); n != 0 {
				t.Errorf("the experiment's name stands alone in %d headings besides the title", n)
			}
			if n := strings.Count(page, "<h1>Experiment "+e.Name()+"</h1>"); n != 1 {
				t.Errorf("%d titles", n)
			}
			verdicts := regexp.MustCompile(`<li data-rate="[^"]*">([^<]*)</li>`).FindAllStringSubmatch(page, -1)
			if len(verdicts) != len(e.RateScales()) {
				t.Fatalf("%d verdicts for %d rate scales", len(verdicts), len(e.RateScales()))
			}
			for i, rate := range e.RateScales() {
				first := wantRanked(e, rate, "goodput")[0]
				v := htmlUnescape(verdicts[i][1])
				if !strings.Contains(v, first.Name()+" ranks first by goodput") ||
					!(strings.Contains(v, "% above") || strings.Contains(v, "× above") || strings.Contains(v, "identical results")) {
					t.Errorf("verdict at %v: %q, want %s first and by how much", rate, v, first.Name())
				}
			}
			md := renderMarkdown(t, e)
			if a, r := strings.Index(md, "### Answer\n"), strings.Index(md, "anked by"); a < 0 || a > r {
				t.Errorf("the Markdown's answer at %d, first ranked table at %d", a, r)
			}
		})
	}
}

func htmlUnescape(s string) string {
	return strings.NewReplacer("&#43;", "+", "&amp;", "&", "&lt;", "<", "&gt;", ">", "&#39;", "'", "&#34;", `"`).Replace(s)
}

func TestPercentMore(t *testing.T) {
	tests := []struct {
		a, b float64
		want string
	}{
		{2.94, 2.85, "3.2%"},
		{0.771, 0.765, "0.78%"},
		{3, 2, "50%"},
		{1.52, 0.006, "253.3×"},
		{1, 1, "0.00%"},
	}
	for _, tt := range tests {
		if got := percentMore(tt.a, tt.b); got != tt.want {
			t.Errorf("percentMore(%v, %v) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
}

// policy is a policy's results for in-memory experiments.
func policy(router, evict string, rate, goodput, p99 float64) experiments.PolicyResult {
	return experiments.PolicyResult{Router: router, Batch: "vllm", Evict: evict, RateScale: rate, Seeds: 2,
		RequestGoodput: experiments.Stat{Mean: goodput, CI95: 0.01}, P99TTFTMs: experiments.Stat{Mean: p99, CI95: 1},
		MedianTTFTMs: experiments.Stat{Mean: p99 / 4}}
}

func TestIdenticalResultsAreNamed(t *testing.T) {
	a, b, c := policy("rr", "lru", 1, 2, 100), policy("rr", "lfu", 1, 2, 100), policy("lr", "lru", 1, 1, 90)
	e := &Experiment{Spec: experiments.Spec{Name: "x"}, Results: experiments.Results{Policies: []experiments.PolicyResult{a, b, c}}}
	if diff := cmp.Diff([][]string{{"rr / lru", "rr / lfu"}}, e.identicalGroups()); diff != "" {
		t.Errorf("identical groups (-want +got):\n%s", diff)
	}
	if n := e.identicalNote(); !strings.Contains(n, "Identical results: rr / lru = rr / lfu") {
		t.Errorf("note %q", n)
	}
	if v := e.verdicts()[0].Text; !strings.Contains(v, "(identical results to rr / lfu), 2.0× above lr / lru") {
		t.Errorf("verdict %q", v)
	}
	// A difference anywhere is no identity.
	b.Preemptions.Mean = 1
	e.Results.Policies[1] = b
	if g := e.identicalGroups(); g != nil {
		t.Errorf("groups %v of differing results", g)
	}

	// The fixture's lru and lfu on Azure (no shared prefixes) come out identical, and the
	// page says so by the charts.
	m := load(t, "matrix")
	if len(m.identicalGroups()) == 0 {
		t.Skip("the matrix fixture's evictors differ; nothing to check on the page")
	}
	page := renderHTML(t, m)
	if !strings.Contains(page, `<p class="note chart-note">Identical results: `) {
		t.Error("the page does not say which results are identical by the charts")
	}
	if !strings.Contains(renderMarkdown(t, m), "Identical results: ") {
		t.Error("the Markdown does not say which results are identical")
	}
}

// A workload without prefix hash ids gets a note instead of a chart of zeros.
func TestNoPrefixInformation(t *testing.T) {
	no, yes := false, true
	tests := []struct {
		name     string
		hashes   *bool
		hitRate  float64
		wantNote string
	}{
		{"no hash ids", &no, 0, "carries no prefix information"},
		{"hash ids", &yes, 0, ""},
		{"older run, no hits", nil, 0, "No cell had a prefix-cache hit"},
		{"older run, hits", nil, 0.1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &Experiment{Results: experiments.Results{PrefixHashes: tt.hashes,
				Cells: []experiments.CellResult{{Status: "done", Summary: &metrics.Summary{PrefixCacheHitRate: tt.hitRate}}}}}
			got := e.noPrefixNote()
			if (tt.wantNote == "") != (got == "") || !strings.Contains(got, tt.wantNote) {
				t.Errorf("note %q, want %q", got, tt.wantNote)
			}
		})
	}
	page := renderHTML(t, load(t, "matrix"))
	if strings.Contains(page, `id="prefix-cache-hit-rate"`) || !strings.Contains(page, "carries no prefix information") {
		t.Error("the Azure experiment's page draws a hit-rate chart or does not say why it has none")
	}
}

// The latency-vs-load charts go to a log axis when one policy melts down.
func TestLoadChartsLogAxis(t *testing.T) {
	tests := []struct {
		name     string
		p99s     [2]float64
		wantAxis string
	}{
		{"close", [2]float64{800, 1200}, "value"},
		{"one melts down", [2]float64{800, 4_000_000}, "log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ps []experiments.PolicyResult
			for _, rate := range []float64{1, 2} {
				ps = append(ps, policy("good", "lru", rate, 2, tt.p99s[0]), policy("bad", "lru", rate, 1, tt.p99s[1]*rate))
			}
			var cells []experiments.CellResult
			for _, p := range ps {
				cells = append(cells, experiments.CellResult{Cell: experiments.Cell{Router: p.Router, Batch: p.Batch, Evict: p.Evict, RateScale: p.RateScale}, Status: "error"})
			}
			e := &Experiment{Spec: experiments.Spec{Name: "x", Workload: experiments.Workload{RateScale: experiments.RateScales{1, 2}}},
				Results: experiments.Results{Policies: ps, Cells: cells}}
			charts, err := loadCharts(lines([]*Experiment{e}, []string{"x"}))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range charts {
				var o option
				if err := json.Unmarshal(c.Option, &o); err != nil {
					t.Fatal(err)
				}
				if got := o.YAxis[0].Type; got != tt.wantAxis {
					t.Errorf("%s: y axis %q, want %q", c.ID, got, tt.wantAxis)
				}
			}
		})
	}
}

// Idle instances are flagged in the answer and in the per-instance table, HTML and Markdown.
func TestIdleInstancesAreFlagged(t *testing.T) {
	skewed := policy("prefix-affinity", "lru", 1, 1, 100)
	share := func(mean, lo, hi float64) experiments.Share { return experiments.Share{Mean: mean, Min: lo, Max: hi} }
	skewed.InstanceShare = []experiments.Share{share(0.5, 0, 1), {}, {}, share(0.5, 0, 1)}
	skewed.Starved = []experiments.Starvation{{Instance: 0, Seeds: 1}, {Instance: 1, Seeds: 2}, {Instance: 2, Seeds: 2}, {Instance: 3, Seeds: 1}}
	even := policy("least-request", "lru", 1, 2, 90)
	even.InstanceShare = []experiments.Share{share(0.25, 0.25, 0.25), share(0.25, 0.2, 0.3), share(0.25, 0.25, 0.25), share(0.25, 0.25, 0.25)}
	e := &Experiment{Spec: experiments.Spec{Name: "x", Workload: experiments.Workload{RateScale: experiments.RateScales{1}}},
		Results: experiments.Results{Policies: []experiments.PolicyResult{even, skewed}}}
	want := "prefix-affinity / lru: instances 1, 2 got no requests in 2 of 2 seeds, instances 0, 3 in 1 of 2."
	if diff := cmp.Diff([]string{want}, e.starvedWarnings()); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	md := renderMarkdown(t, e)
	if !strings.Contains(md, "- ⚠ "+want) {
		t.Errorf("the Markdown's answer does not flag the idle instances:\n%s", md)
	}
	if !strings.Contains(md, "| `least-request / lru` | 25.0 | 25.0 (20.0–30.0) | 25.0 | 25.0 | none |") ||
		!strings.Contains(md, "| `prefix-affinity / lru` | 50.0 (0.0–100.0) | 0.0 | 0.0 | 50.0 (0.0–100.0) | ⚠ instances 1, 2 got") {
		t.Errorf("the Markdown's requests-per-instance table:\n%s", md)
	}
	var b bytes.Buffer
	if err := WriteHTML(&b, []*Experiment{e}); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	if !strings.Contains(page, `<p class="warning">⚠ `+want) || !strings.Contains(page, `<tr class="starved">`) {
		t.Errorf("the page does not flag the idle instances")
	}
}
