package report

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/experiments"
	"servelab/internal/echartsjs"
)

// slice is the shipped 3000-request Azure conversation trace.
const slice = "../../examples/traces/azure_conv_3000.csv"

// fixtureRoot holds the experiments the tests share; TestMain removes it.
var fixtureRoot string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "report-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fixtureRoot = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type fixture struct {
	once sync.Once
	dir  string
	err  error
}

var fixtures = map[string]*fixture{"matrix": {}, "sweep": {}, "broken": {}}

// specs are the shared experiments: a 2 routers x 2 evictors x 2 seeds matrix, a sweep of
// two rate scales, and one whose second router's config vanishes before it runs.
var specs = map[string]string{
	"matrix": "name: matrix\nworkload: {trace: TRACE, max_requests: 300, rate_scale: 6}\n" +
		"cluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\n" +
		"policies: {routers: [round-robin, least-request], evict: [lru, lfu]}\nseeds: [1, 2]\n" +
		"slo: {ttft_ms: 500, tpot_ms: 50}\n",
	"sweep": "name: sweep\nworkload: {trace: TRACE, max_requests: 300, rate_scale: [2, 6]}\n" +
		"cluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\n" +
		"policies: {routers: [round-robin, least-request]}\nseeds: [1, 2]\n" +
		"slo: {ttft_ms: 500}\n",
	"broken": "name: broken\nworkload: {trace: TRACE, max_requests: 100}\n" +
		"policies: {routers: [round-robin, epp.yaml]}\nseeds: [3]\n",
}

// experimentDir runs a shared experiment once and returns its directory.
func experimentDir(t testing.TB, name string) string {
	t.Helper()
	f := fixtures[name]
	f.once.Do(func() { f.dir, f.err = runFixture(name) })
	if f.err != nil {
		t.Fatalf("experiment %s: %v", name, f.err)
	}
	return f.dir
}

func runFixture(name string) (string, error) {
	dir := filepath.Join(fixtureRoot, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	trace, err := filepath.Abs(slice)
	if err != nil {
		return "", err
	}
	epp := filepath.Join(dir, "epp.yaml")
	if name == "broken" {
		config, err := os.ReadFile("../../examples/router/llm-d-default.yaml")
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(epp, config, 0o644); err != nil {
			return "", err
		}
	}
	spec, err := experiments.Parse([]byte(strings.ReplaceAll(specs[name], "TRACE", trace)), filepath.Join(dir, "spec.yaml"))
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "out")
	if name == "broken" {
		// The router's config goes missing after the spec was checked: its cell fails.
		if err := os.Remove(epp); err != nil {
			return "", err
		}
		if _, err := experiments.Run(context.Background(), spec, experiments.Options{Out: out}); err == nil {
			return "", fmt.Errorf("the broken experiment ran without failing")
		}
		return out, nil
	}
	_, err = experiments.Run(context.Background(), spec, experiments.Options{Out: out})
	return out, err
}

func load(t testing.TB, name string) *Experiment {
	t.Helper()
	e, err := Load(experimentDir(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func renderHTML(t testing.TB, exps ...*Experiment) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteHTML(&b, exps); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func renderMarkdown(t testing.TB, e *Experiment) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteMarkdown(&b, e); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// htmlTable is a ranked table read back from the page.
type htmlTable struct {
	order string
	rate  float64
	rows  []htmlRow
}

type htmlRow struct {
	policy string
	failed bool
	cells  []string
}

var (
	tableRE = regexp.MustCompile(`(?s)<table class="ranked" data-order="([^"]+)" data-rate="([^"]+)">(.*?)</table>`)
	rowRE   = regexp.MustCompile(`<tr( class="failed")?><td>\d+</td><td class="policy"><span[^>]*></span>([^<]*)</td>(.*?)</tr>`)
	cellRE  = regexp.MustCompile(`<td>(.*?)</td>`)
	tagRE   = regexp.MustCompile(`<[^>]*>`)
)

func htmlTables(t *testing.T, page string) []htmlTable {
	t.Helper()
	var out []htmlTable
	for _, m := range tableRE.FindAllStringSubmatch(page, -1) {
		rate, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("data-rate %q: %v", m[2], err)
		}
		tab := htmlTable{order: m[1], rate: rate}
		for _, r := range rowRE.FindAllStringSubmatch(m[3], -1) {
			row := htmlRow{policy: html.UnescapeString(r[2]), failed: r[1] != ""}
			for _, c := range cellRE.FindAllStringSubmatch(r[3], -1) {
				// "mean <span class="ci">± ci</span>" reads "mean ± ci".
				row.cells = append(row.cells, html.UnescapeString(tagRE.ReplaceAllString(c[1], "")))
			}
			tab.rows = append(tab.rows, row)
		}
		out = append(out, tab)
	}
	return out
}

// option is the part of an ECharts option the tests read.
type option struct {
	XAxis []struct {
		Type string   `json:"type"`
		Data []string `json:"data"`
	} `json:"xAxis"`
	YAxis []struct {
		Type string `json:"type"`
	} `json:"yAxis"`
	Series []struct {
		Name  string `json:"name"`
		Stack string `json:"stack"`
		Data  []struct {
			Value []float64 `json:"value"`
		} `json:"data"`
	} `json:"series"`
}

var specsRE = regexp.MustCompile(`(?s)var specs = (.*?);\n`)

// chartOptions parses the charts' options out of the page's script.
func chartOptions(t *testing.T, page string) (ids []string, opts map[string]option) {
	t.Helper()
	m := specsRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("the page has no chart options")
	}
	var list []struct {
		ID     string `json:"id"`
		Option option `json:"option"`
	}
	if err := json.Unmarshal([]byte(m[1]), &list); err != nil {
		t.Fatalf("chart options: %v", err)
	}
	opts = map[string]option{}
	for _, c := range list {
		ids = append(ids, c.ID)
		opts[c.ID] = c.Option
		if !strings.Contains(page, `<div class="chart" id="`+c.ID+`"`) {
			t.Errorf("chart %s has no element", c.ID)
		}
	}
	return ids, opts
}

// lineSeries are a chart's drawn lines (not confidence bands), by name.
func lineSeries(o option) map[string][][]float64 {
	out := map[string][][]float64{}
	for _, s := range o.Series {
		if s.Stack != "" {
			continue
		}
		for _, d := range s.Data {
			out[s.Name] = append(out[s.Name], d.Value)
		}
	}
	return out
}

// policiesAt are the names of an experiment's policies at a rate with a finished cell.
func policiesAt(e *Experiment, rate float64) []string {
	var names []string
	for _, p := range e.Results.Policies {
		if p.RateScale == rate && p.Seeds > 0 {
			names = append(names, p.Name())
		}
	}
	slices.Sort(names)
	return names
}

func TestLoadNamesTheFile(t *testing.T) {
	src := experimentDir(t, "matrix")
	results, err := os.ReadFile(filepath.Join(src, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := os.ReadFile(filepath.Join(src, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		results, spec []byte // nil: no file
		want          string
	}{
		{"empty directory", nil, nil, "no results.json"},
		{"corrupt results", []byte("{"), spec, "results.json"},
		{"no spec", results, nil, "spec.yaml"},
		{"corrupt spec", results, []byte("name: [x"), "spec.yaml"},
		{"spec of the wrong shape", results, []byte("seeds: many\n"), "spec.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for file, data := range map[string][]byte{"results.json": tt.results, "spec.yaml": tt.spec} {
				if data != nil {
					if err := os.WriteFile(filepath.Join(dir, file), data, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			_, err := Load(dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load: %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

func TestRankedTablesFollowResults(t *testing.T) {
	for _, name := range []string{"matrix", "sweep", "broken"} {
		t.Run(name, func(t *testing.T) {
			e := load(t, name)
			tables := htmlTables(t, renderHTML(t, e))
			rates := e.RateScales()
			if len(tables) != 2*len(rates) {
				t.Fatalf("%d ranked tables for %d rate scales", len(tables), len(rates))
			}
			for i, tab := range tables {
				rate := rates[i/2]
				wantOrder := []string{"goodput", "p99-ttft"}[i%2]
				if tab.order != wantOrder || tab.rate != rate {
					t.Errorf("table %d is by %s at %v, want by %s at %v", i, tab.order, tab.rate, wantOrder, rate)
				}
				want := wantRanked(e, rate, tab.order)
				var gotNames, wantNames []string
				for _, r := range tab.rows {
					gotNames = append(gotNames, r.policy)
				}
				for _, p := range want {
					wantNames = append(wantNames, p.Name())
				}
				if diff := cmp.Diff(wantNames, gotNames); diff != "" {
					t.Fatalf("table %d (by %s at %v) policies (-want +got):\n%s", i, tab.order, rate, diff)
				}
				for j, r := range tab.rows {
					p := want[j]
					checkStat(t, p.Name()+" goodput", r.cells[0], p.RequestGoodput, p.Seeds)
					checkStat(t, p.Name()+" p99 TTFT", r.cells[1], p.P99TTFTMs, p.Seeds)
					if r.failed != (p.FailedCells > 0) {
						t.Errorf("%s: row flagged failed %v, %d failed cells", p.Name(), r.failed, p.FailedCells)
					}
				}
			}
		})
	}
}

// wantRanked is an experiment's policies at a rate in the order a ranked table should
// list them: results.json's by goodput; by p99 TTFT lowest first, policies without a
// finished cell last.
func wantRanked(e *Experiment, rate float64, order string) []*experiments.PolicyResult {
	var want []*experiments.PolicyResult
	for j := range e.Results.Policies {
		if p := &e.Results.Policies[j]; p.RateScale == rate {
			want = append(want, p)
		}
	}
	if order == "p99-ttft" {
		slices.SortStableFunc(want, func(a, b *experiments.PolicyResult) int {
			ka, kb := a.P99TTFTMs.Mean, b.P99TTFTMs.Mean
			if a.Seeds == 0 {
				ka = math.Inf(1)
			}
			if b.Seeds == 0 {
				kb = math.Inf(1)
			}
			return cmpFloat(ka, kb)
		})
	}
	return want
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkStat checks a table cell shows a stat: "mean ± ci", rounded.
func checkStat(t *testing.T, what, cell string, s experiments.Stat, seeds int) {
	t.Helper()
	if seeds == 0 {
		if cell != "–" {
			t.Errorf("%s: %q for a policy with no finished cell", what, cell)
		}
		return
	}
	meanText, ciText, hasCI := strings.Cut(cell, " ± ")
	if hasCI != (seeds > 1) {
		t.Errorf("%s: %q with %d seeds", what, cell, seeds)
	}
	mean, err := strconv.ParseFloat(meanText, 64)
	if err != nil {
		t.Errorf("%s: %q: %v", what, cell, err)
		return
	}
	tol := 0.5*math.Pow10(-decimals(s.Mean)) + 1e-9
	if math.Abs(mean-s.Mean) > tol {
		t.Errorf("%s: shows %q, mean is %v", what, cell, s.Mean)
	}
	if hasCI {
		ci, err := strconv.ParseFloat(ciText, 64)
		if err != nil || math.Abs(ci-s.CI95) > tol {
			t.Errorf("%s: shows %q, CI is %v", what, cell, s.CI95)
		}
	}
}

func TestMarkdownTablesMatchResults(t *testing.T) {
	rowRE := regexp.MustCompile("(?m)^\\| (\\d+) \\| `([^`]*)` \\| (.*) \\|$")
	for _, name := range []string{"matrix", "sweep", "broken"} {
		t.Run(name, func(t *testing.T) {
			e := load(t, name)
			md := renderMarkdown(t, e)
			var sections []string
			for _, sec := range strings.Split(md, "\n### ")[1:] {
				if strings.Contains(sec[:strings.Index(sec, "\n")], "anked by") {
					sections = append(sections, sec)
				}
			}
			rates := e.RateScales()
			if len(sections) < 2*len(rates) {
				t.Fatalf("%d sections for %d rate scales:\n%s", len(sections), len(rates), md)
			}
			for i, rate := range rates {
				for k, order := range []string{"goodput", "p99-ttft"} {
					want := wantRanked(e, rate, order)
					sec := sections[2*i+k]
					head := "Ranked by " + []string{"goodput", "p99 TTFT"}[k]
					if len(rates) > 1 {
						head = "Rate ×" + strconv.FormatFloat(rate, 'g', -1, 64) + ": ranked by " + []string{"goodput", "p99 TTFT"}[k]
					}
					if !strings.HasPrefix(sec, head+"\n") {
						t.Errorf("section %q, want %q", strings.SplitN(sec, "\n", 2)[0], head)
					}
					rows := rowRE.FindAllStringSubmatch(sec, -1)
					if len(rows) != len(want) {
						t.Fatalf("%s: %d rows, want %d:\n%s", head, len(rows), len(want), sec)
					}
					for j, r := range rows {
						p := want[j]
						if r[1] != strconv.Itoa(j+1) || r[2] != p.Name() {
							t.Errorf("%s row %d: #%s %s, want %s", head, j+1, r[1], r[2], p.Name())
						}
						cells := strings.Split(r[3], " | ")
						checkStat(t, p.Name()+" goodput", cells[0], p.RequestGoodput, p.Seeds)
						checkStat(t, p.Name()+" p99 TTFT", cells[1], p.P99TTFTMs, p.Seeds)
						seeds := cells[len(cells)-1]
						if wantSeeds := strconv.Itoa(p.Seeds); !strings.HasPrefix(seeds, wantSeeds) ||
							strings.Contains(seeds, "failed") != (p.FailedCells > 0) {
							t.Errorf("%s: seeds %q, want %d finished and %d failed", p.Name(), seeds, p.Seeds, p.FailedCells)
						}
					}
				}
			}
		})
	}
}

func TestChartsShowEveryPolicy(t *testing.T) {
	distributions := []string{"ttft-cdf", "tpot-cdf"}
	// The fixtures' Azure trace carries no prefix hash ids: no hit-rate chart (a note instead).
	times := []string{"request-throughput", "output-throughput", "requests-waiting", "requests-running", "kv-cache-usage"}
	tests := []struct {
		name    string
		wantIDs []string
	}{
		{"matrix", append(slices.Clone(distributions), times...)},
		{"sweep", append(append([]string{"ttft-p50-vs-load", "ttft-p99-vs-load"}, distributions...), times...)},
		{"broken", append(slices.Clone(distributions), times...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := load(t, tt.name)
			ids, opts := chartOptions(t, renderHTML(t, e))
			if diff := cmp.Diff(tt.wantIDs, ids); diff != "" {
				t.Fatalf("charts (-want +got):\n%s", diff)
			}
			rate := chartRate(e)
			want := policiesAt(e, rate)
			for _, id := range ids {
				if strings.HasSuffix(id, "-vs-load") {
					continue
				}
				got := lineSeries(opts[id])
				names := slices.Sorted(func(yield func(string) bool) {
					for n := range got {
						if !yield(n) {
							return
						}
					}
				})
				if diff := cmp.Diff(want, names); diff != "" {
					t.Errorf("%s: series (-want +got):\n%s", id, diff)
				}
				for name, pts := range got {
					if len(pts) < 2 {
						t.Errorf("%s: %s has %d points", id, name, len(pts))
					}
					for i := 1; i < len(pts); i++ {
						if pts[i][0] < pts[i-1][0] {
							t.Errorf("%s: %s: x goes back at point %d: %v then %v", id, name, i, pts[i-1], pts[i])
							break
						}
					}
				}
			}
			for _, id := range distributions {
				for name, pts := range lineSeries(opts[id]) {
					for i, p := range pts {
						if !(p[1] > 0 && p[1] <= 1) || i > 0 && p[1] < pts[i-1][1] {
							t.Errorf("%s: %s: point %d %v is not on a CDF", id, name, i, p)
							break
						}
					}
					if last := pts[len(pts)-1][1]; last != 1 {
						t.Errorf("%s: %s ends at %v, want 1", id, name, last)
					}
				}
			}
			if axis := opts["ttft-cdf"].XAxis[0].Type; axis != "log" {
				t.Errorf("TTFT CDF on a %q axis, want log", axis)
			}
		})
	}
}

// The charts' numbers agree with the cells' files read independently.
func TestChartsMatchTheCells(t *testing.T) {
	e := load(t, "matrix")
	_, opts := chartOptions(t, renderHTML(t, e))
	ttfts := lineSeries(opts["ttft-cdf"])
	throughput := lineSeries(opts["request-throughput"])
	for _, p := range e.Results.Policies {
		var ttft []float64
		var first, n float64
		for _, c := range e.Results.Cells {
			if c.Router != p.Router || c.Batch != p.Batch || c.Evict != p.Evict || c.Status != "done" {
				continue
			}
			rows, err := experiments.ReadRecords(e.Dir, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				if !r.Failed {
					ttft = append(ttft, r.TTFTMs)
				}
			}
			samples, err := experiments.ReadTimeSeries(e.Dir, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			first += samples[0].RequestThroughput
			n++
		}
		pts := ttfts[p.Name()]
		if len(pts) == 0 {
			t.Fatalf("%s: no TTFT CDF", p.Name())
		}
		top, last := slices.Max(ttft), pts[len(pts)-1]
		if math.Abs(last[0]-top) > 1e-4*top {
			t.Errorf("%s: TTFT CDF ends at %v ms, the slowest request took %v", p.Name(), last[0], top)
		}
		slices.Sort(ttft)
		bottom := pts[0]
		below := float64(len(ttft)-len(slices.DeleteFunc(slices.Clone(ttft), func(x float64) bool { return x <= ttft[0] }))) / float64(len(ttft))
		if math.Abs(bottom[0]-ttft[0]) > 1e-4*ttft[0] || math.Abs(bottom[1]-below) > 1e-4 {
			t.Errorf("%s: TTFT CDF starts at %v, want (%v, %v)", p.Name(), bottom, ttft[0], below)
		}
		if got, want := throughput[p.Name()][0][1], first/n; math.Abs(got-want) > 1e-4*want {
			t.Errorf("%s: request throughput starts at %v, the seeds' mean is %v", p.Name(), got, want)
		}
	}
}

func TestLatencyVsLoad(t *testing.T) {
	e := load(t, "sweep")
	_, opts := chartOptions(t, renderHTML(t, e))
	for id, stat := range map[string]func(*experiments.PolicyResult) experiments.Stat{
		"ttft-p50-vs-load": func(p *experiments.PolicyResult) experiments.Stat { return p.MedianTTFTMs },
		"ttft-p99-vs-load": func(p *experiments.PolicyResult) experiments.Stat { return p.P99TTFTMs },
	} {
		o := opts[id]
		if diff := cmp.Diff([]string{"×2", "×6"}, o.XAxis[0].Data); diff != "" {
			t.Errorf("%s: x axis (-want +got):\n%s", id, diff)
		}
		// Each policy: its means, a lower bound and a band width stacked on it.
		byName := map[string][][][]float64{}
		for _, s := range o.Series {
			var pts [][]float64
			for _, d := range s.Data {
				pts = append(pts, d.Value)
			}
			byName[s.Name] = append(byName[s.Name], pts)
		}
		if len(byName) != 2 {
			t.Errorf("%s: series for %d policies, want 2", id, len(byName))
		}
		for _, p := range e.Results.Policies {
			ss := byName[p.Name()]
			if len(ss) != 3 {
				t.Errorf("%s: %s has %d series, want lower bound, band and mean", id, p.Name(), len(ss))
				continue
			}
			x := float64(slices.Index([]float64{2, 6}, p.RateScale))
			s := stat(&p)
			lower, width, mean := ss[0][int(x)], ss[1][int(x)], ss[2][int(x)]
			lo := math.Max(s.Mean-s.CI95, 0)
			if o.YAxis[0].Type == "log" {
				lo = math.Max(s.Mean-s.CI95, s.Mean/10)
			}
			want := [][]float64{{x, lo}, {x, s.Mean + s.CI95 - lo}, {x, s.Mean}}
			if diff := cmp.Diff(want, [][]float64{lower, width, mean}, cmpopts.EquateApprox(1e-4, 1e-9)); diff != "" {
				t.Errorf("%s: %s at %v (-want +got):\n%s", id, p.Name(), p.RateScale, diff)
			}
		}
	}
}

func TestHTMLLoadsNothing(t *testing.T) {
	script := string(echartsjs.Script())
	for _, name := range []string{"matrix", "sweep"} {
		page := renderHTML(t, load(t, name))
		if n := strings.Count(page, script); n != 1 {
			t.Fatalf("%s: the ECharts bundle is inlined %d times, want once", name, n)
		}
		rest := strings.Replace(page, script, "", 1)
		for _, bad := range []string{"http://", "https://", "src=", "href=", "<link", "@import", "url("} {
			if strings.Contains(rest, bad) {
				i := strings.Index(rest, bad)
				t.Errorf("%s: the page outside the ECharts bundle has %q: …%s…", name, bad, rest[max(i-80, 0):min(i+80, len(rest))])
			}
		}
		if !strings.Contains(rest, "<script>\n(function () {") {
			t.Errorf("%s: no chart script", name)
		}
	}
}

func TestReportIsDeterministic(t *testing.T) {
	for _, name := range []string{"matrix", "sweep"} {
		a, b := load(t, name), load(t, name)
		if renderHTML(t, a) != renderHTML(t, b) {
			t.Errorf("%s: two renderings of the HTML differ", name)
		}
		if renderMarkdown(t, a) != renderMarkdown(t, b) {
			t.Errorf("%s: two renderings of the Markdown differ", name)
		}
	}
}

func TestFailedCellsAreFlagged(t *testing.T) {
	e := load(t, "broken")
	var failed experiments.CellResult
	for _, c := range e.Results.Cells {
		if c.Status != "done" {
			failed = c
		}
	}
	if failed.ID == "" {
		t.Fatal("the broken experiment has no failed cell")
	}
	page := renderHTML(t, e)
	if !strings.Contains(page, "<li><code>"+failed.ID+"</code>: ") {
		t.Errorf("the page does not list the failed cell %s", failed.ID)
	}
	md := renderMarkdown(t, e)
	if !strings.Contains(md, "### ⚠ Failed cells\n\n- `"+failed.ID+"`: ") || !strings.Contains(md, "epp.yaml") {
		t.Errorf("the Markdown does not list the failed cell %s with its error:\n%s", failed.ID, md)
	}
	if !strings.Contains(md, "| 0 ⚠ 1 failed |") {
		t.Errorf("the Markdown does not flag the failed policy's seeds:\n%s", md)
	}
	if !strings.Contains(md, "cells: 2, 1 failed") {
		t.Errorf("the Markdown does not count the failed cell:\n%s", md)
	}
}

func TestOverlaidExperiments(t *testing.T) {
	matrix, sweep := load(t, "matrix"), load(t, "sweep")
	ids, opts := chartOptions(t, renderHTML(t, matrix, sweep))
	if !slices.Contains(ids, "ttft-p99-vs-load") {
		t.Error("no latency-vs-load chart though one experiment sweeps")
	}
	for _, id := range ids {
		var want []string
		for _, e := range []*Experiment{matrix, sweep} {
			if strings.HasSuffix(id, "-vs-load") && e == matrix {
				continue
			}
			rate := chartRate(e)
			if strings.HasSuffix(id, "-vs-load") {
				rate = e.RateScales()[0]
			}
			for _, n := range policiesAt(e, rate) {
				want = append(want, e.Name()+" · "+n)
			}
		}
		slices.Sort(want)
		var got []string
		for name := range lineSeries(opts[id]) {
			got = append(got, name)
		}
		slices.Sort(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: series (-want +got):\n%s", id, diff)
		}
	}

	// The same experiment twice: told apart.
	again := load(t, "matrix")
	_, opts = chartOptions(t, renderHTML(t, matrix, again))
	if n := len(lineSeries(opts["ttft-cdf"])); n != 8 {
		t.Errorf("two copies of a 4-policy experiment drew %d distinct TTFT series, want 8", n)
	}
}

func TestExperimentLabels(t *testing.T) {
	exp := func(name, dir string) *Experiment {
		return &Experiment{Dir: dir, Spec: experiments.Spec{Name: name}}
	}
	tests := []struct {
		exps []*Experiment
		want []string
	}{
		{[]*Experiment{exp("a", "x")}, []string{"a"}},
		{[]*Experiment{exp("a", "x"), exp("b", "y")}, []string{"a", "b"}},
		{[]*Experiment{exp("a", "x"), exp("a", "y")}, []string{"a (x)", "a (y)"}},
		{[]*Experiment{exp("a", "x"), exp("a", "x")}, []string{"a (x)", "a (x) #2"}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, experimentLabels(tt.exps)); diff != "" {
			t.Errorf("labels (-want +got):\n%s", diff)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	src := experimentDir(t, "sweep")
	// A copy, so the shared experiment keeps no report.
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	htmlPath, mdPath, err := Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	if htmlPath != filepath.Join(dir, "report.html") || mdPath != filepath.Join(dir, "report.md") {
		t.Errorf("wrote %s and %s", htmlPath, mdPath)
	}
	e := load(t, "sweep")
	for path, want := range map[string]string{htmlPath: renderHTML(t, e), mdPath: renderMarkdown(t, e)} {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s differs from what WriteHTML/WriteMarkdown give", path)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".report*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	// The Markdown alone needs only results.json and spec.yaml.
	bare := t.TempDir()
	for _, f := range []string{"results.json", "spec.yaml"} {
		data, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bare, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exp, err := Load(bare)
	if err != nil {
		t.Fatal(err)
	}
	htmlPath, mdPath, err = exp.WriteFiles(false)
	if err != nil || htmlPath != "" || mdPath != filepath.Join(bare, "report.md") {
		t.Errorf("WriteFiles(false) = %q, %q, %v", htmlPath, mdPath, err)
	}
	if _, err := os.Stat(filepath.Join(bare, "report.html")); err == nil {
		t.Error("WriteFiles(false) wrote report.html")
	}
	// The HTML needs the cells, and says which file is missing.
	if _, _, err := Write(bare); err == nil || !strings.Contains(err.Error(), "timeseries.json") {
		t.Errorf("Write without cells: %v, want an error naming timeseries.json", err)
	}
}

func TestCDFPoints(t *testing.T) {
	tests := []struct {
		name string
		xs   []float64
		want []point
	}{
		{"empty", nil, nil},
		{"one", []float64{5}, []point{{5, 1}}},
		{"ties take the fraction at or below", []float64{2, 1, 1}, []point{{1, 2.0 / 3}, {2, 1}}},
		{"all equal", []float64{3, 3, 3, 3}, []point{{3, 1}}},
		{"few values keep every one", []float64{4, 3, 2, 1}, []point{{1, 0.25}, {2, 0.5}, {3, 0.75}, {4, 1}}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, cdfPoints(tt.xs)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}

	// Many values: a few hundred points, each the exact fraction at or below it.
	const n = 100_000
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = float64((i * 7919) % 5000) // ties, out of order
	}
	pts := cdfPoints(slices.Clone(xs))
	if len(pts) < 200 || len(pts) > 320 {
		t.Errorf("%d points for %d values", len(pts), n)
	}
	slices.Sort(xs)
	for i, p := range pts {
		atOrBelow := sortSearch(xs, p[0])
		if p[1] != float64(atOrBelow)/n {
			t.Fatalf("point %d %v: %d of %d values are at or below it", i, p, atOrBelow, n)
		}
		if i > 0 && !(p[0] > pts[i-1][0] && p[1] > pts[i-1][1]) {
			t.Fatalf("points %d and %d do not both increase: %v %v", i-1, i, pts[i-1], p)
		}
	}
	if last := pts[len(pts)-1]; last != (point{4999, 1}) {
		t.Errorf("last point %v", last)
	}
	// The top 1% is drawn finely.
	tail := 0
	for _, p := range pts {
		if p[1] > 0.99 {
			tail++
		}
	}
	if tail < 30 {
		t.Errorf("%d points in the top 1%%", tail)
	}
}

// sortSearch counts the sorted xs at or below x.
func sortSearch(xs []float64, x float64) int {
	i, _ := slices.BinarySearch(xs, math.Nextafter(x, math.Inf(1)))
	return i
}

func TestMeanOverSeeds(t *testing.T) {
	s := func(t, v float64) experiments.Sample { return experiments.Sample{Time: t, RequestThroughput: v} }
	rt := func(s *experiments.Sample) float64 { return s.RequestThroughput }
	tests := []struct {
		name string
		runs [][]experiments.Sample
		want []point
	}{
		{"no seeds", nil, []point{}},
		// The runner ends every series on the interval (its last rates over a whole
		// interval), so every sample is drawn, the last included.
		{"one seed keeps its last sample", [][]experiments.Sample{{s(1, 2), s(2, 4), s(3, 1)}}, []point{{1, 2}, {2, 4}, {3, 1}}},
		{"a lone sample", [][]experiments.Sample{{s(1, 7)}}, []point{{1, 7}}},
		{"seeds align by index", [][]experiments.Sample{
			{s(1, 2), s(2, 4), s(3, 6), s(4, 1)},
			{s(1, 4), s(2, 8), s(3, 2)},
		}, []point{{1, 3}, {2, 6}, {3, 4}, {4, 1}}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, meanOverSeeds(tt.runs, rt)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestThin(t *testing.T) {
	pts := []point{{0, 0}, {1, 2}, {2, 4}, {3, 6}, {4, 8}}
	tests := []struct {
		limit int
		want  []point
	}{
		{5, pts},
		{10, pts},
		{3, []point{{0.5, 1}, {2.5, 5}, {4, 8}}},
		{1, []point{{2, 4}}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, thin(pts, tt.limit)); diff != "" {
			t.Errorf("thin to %d (-want +got):\n%s", tt.limit, diff)
		}
	}
}

func TestRoundSig(t *testing.T) {
	tests := []struct {
		x    float64
		sig  int
		want float64
	}{
		{0, 5, 0},
		{1234.5678, 5, 1234.6},
		{123456789, 5, 123460000},
		{0.000123456, 3, 0.000123},
		{-98.7654, 3, -98.8},
		{1, 5, 1},
	}
	for _, tt := range tests {
		if got := roundSig(tt.x, tt.sig); got != tt.want {
			t.Errorf("roundSig(%v, %d) = %v, want %v", tt.x, tt.sig, got, tt.want)
		}
	}
}

func TestFmtStat(t *testing.T) {
	tests := []struct {
		s     experiments.Stat
		seeds int
		scale float64
		want  string
	}{
		{experiments.Stat{Mean: 1234.56, CI95: 12.3}, 3, 1, "1235 ± 12"},
		{experiments.Stat{Mean: 21.66, CI95: 0.04}, 3, 1, "21.7 ± 0.0"},
		{experiments.Stat{Mean: 0.4567}, 1, 1, "0.457"},
		{experiments.Stat{Mean: 0.25, CI95: 0.01}, 2, 100, "25.0 ± 1.0"},
		{experiments.Stat{}, 0, 1, "–"},
	}
	for _, tt := range tests {
		if got := FormatStat(tt.s, tt.seeds, tt.scale); got != tt.want {
			t.Errorf("FormatStat(%+v, %d, %v) = %q, want %q", tt.s, tt.seeds, tt.scale, got, tt.want)
		}
	}
}

func TestMergeSorted(t *testing.T) {
	tests := []struct {
		lists [][]float64
		want  []float64
	}{
		{nil, nil},
		{[][]float64{{1, 3, 5}}, []float64{1, 3, 5}},
		{[][]float64{{1, 3, 5}, {2, 2, 6}, {}, {0, 7}}, []float64{0, 1, 2, 2, 3, 5, 6, 7}},
	}
	for _, tt := range tests {
		in := make([][]float64, len(tt.lists))
		for i, l := range tt.lists {
			in[i] = slices.Clone(l)
		}
		got := mergeSorted(in)
		if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("mergeSorted(%v) (-want +got):\n%s", tt.lists, diff)
		}
		if diff := cmp.Diff(tt.lists, in, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("mergeSorted changed its input (-before +after):\n%s", diff)
		}
	}
}
