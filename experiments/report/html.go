package report

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/go-echarts/go-echarts/v2/charts"
	"github.com/go-echarts/go-echarts/v2/opts"

	"servelab/experiments"
	"servelab/internal/echartsjs"
)

// palette colours policies, the same policy the same colour in every chart and table (and
// in every experiment of a comparison, told apart there by line style).
var palette = []string{
	"#5470c6", "#91cc75", "#fac858", "#ee6666", "#73c0de", "#3ba272", "#fc8452", "#9a60b4",
	"#ea7ccc", "#2f4554", "#c23531", "#61a0a8", "#d48265", "#749f83", "#ca8622", "#6e7074",
}

// dashes tell experiments apart when a report overlays several.
var dashes = []string{"solid", "dashed", "dotted"}

// Charts show at most this many points per time series.
const maxTimePoints = 400

// line is one experiment's policy as the charts draw it.
type line struct {
	exp        *Experiment
	name       string // the policy's name
	label      string // the series name
	color      string
	dash       string
	byRate     []*experiments.PolicyResult // ascending rate
	chartCells []string                    // finished cells at the experiment's chart rate
}

// chartRate is the rate scale an experiment's distribution and time-series charts show: the
// highest. A sweep's policies differ most at its heaviest load, and one set of charts per
// rate would multiply the page for little; the ranked tables and the latency-vs-load charts
// cover every rate.
func chartRate(e *Experiment) float64 {
	rates := e.RateScales()
	if len(rates) == 0 {
		return 1
	}
	return rates[len(rates)-1]
}

// experimentLabels names the experiments in series names: by name, and where two share a
// name, by name and directory.
func experimentLabels(exps []*Experiment) []string {
	labels := make([]string, len(exps))
	count := map[string]int{}
	for _, e := range exps {
		count[e.Name()]++
	}
	seen := map[string]int{}
	for i, e := range exps {
		labels[i] = e.Name()
		if count[e.Name()] > 1 {
			labels[i] = fmt.Sprintf("%s (%s)", e.Name(), e.Dir)
		}
		seen[labels[i]]++
		if seen[labels[i]] > 1 {
			labels[i] = fmt.Sprintf("%s #%d", labels[i], seen[labels[i]])
		}
	}
	return labels
}

// policyKey is a policy combination, without its rate.
type policyKey struct{ cluster, router, batch, evict string }

func (k policyKey) name() string {
	p := experiments.PolicyResult{Cluster: k.cluster, Router: k.router, Batch: k.batch, Evict: k.evict}
	return p.Name()
}

// lines lists every experiment's policies in the spec's matrix order (the order of
// results.json's cells), coloured by policy.
func lines(exps []*Experiment, labels []string) []*line {
	colors := map[string]string{}
	var out []*line
	for i, e := range exps {
		byKey := map[policyKey]*line{}
		var order []policyKey
		for _, c := range e.Results.Cells {
			k := policyKey{c.Cluster, c.Router, c.Batch, c.Evict}
			if _, ok := byKey[k]; !ok {
				l := &line{exp: e, name: k.name(), dash: dashes[i%len(dashes)]}
				if _, ok := colors[l.name]; !ok {
					colors[l.name] = palette[len(colors)%len(palette)]
				}
				l.color, l.label = colors[l.name], l.name
				if len(exps) > 1 {
					l.label = labels[i] + " · " + l.name
				}
				byKey[k] = l
				order = append(order, k)
			}
			if c.Status == "done" && c.RateScale == chartRate(e) {
				byKey[k].chartCells = append(byKey[k].chartCells, c.ID)
			}
		}
		for j := range e.Results.Policies {
			p := &e.Results.Policies[j]
			if l := byKey[policyKey{p.Cluster, p.Router, p.Batch, p.Evict}]; l != nil {
				l.byRate = append(l.byRate, p)
			}
		}
		for _, k := range order {
			l := byKey[k]
			slices.SortStableFunc(l.byRate, func(a, b *experiments.PolicyResult) int { return cmp.Compare(a.RateScale, b.RateScale) })
			out = append(out, l)
		}
	}
	return out
}

// chart is one chart's element id and ECharts option.
type chart struct {
	ID     string          `json:"id"`
	Option json.RawMessage `json:"option"`
	// Height is the element's, in pixels: more for a legend of several rows.
	Height int `json:"-"`
}

// series is one line of a chart.
type series struct {
	line   *line
	points []point
	// stack and band make a confidence band: a transparent lower bound stacked under a
	// filled width.
	stack string
	band  bool
	lower bool
}

type axes struct {
	title, subtitle string
	x               opts.XAxis
	y               opts.YAxis
	tooltip         string
	zoom            bool
}

// buildChart renders a line chart's option with go-echarts.
func buildChart(id string, a axes, ss []series) (chart, error) {
	var names []string
	for _, s := range ss {
		if !slices.Contains(names, s.line.label) {
			names = append(names, s.line.label)
		}
	}
	rows := legendRows(names)
	c := charts.NewLine()
	global := []charts.GlobalOpts{
		charts.WithTitleOpts(opts.Title{Title: a.title, Subtitle: a.subtitle, Left: "center"}),
		charts.WithTooltipOpts(opts.Tooltip{Show: opts.Bool(true), Trigger: a.tooltip}),
		charts.WithLegendOpts(opts.Legend{Show: opts.Bool(true), Bottom: "0"}),
		charts.WithXAxisOpts(a.x),
		charts.WithYAxisOpts(a.y),
		charts.WithAnimation(false),
		charts.WithGridOpts(opts.Grid{Left: "24", Right: "32", ContainLabel: opts.Bool(true), Top: "64", Bottom: strconv.Itoa(48 + legendRowHeight*rows)}),
	}
	if a.zoom {
		global = append(global, charts.WithDataZoomOpts(opts.DataZoom{Type: "inside", XAxisIndex: 0}))
	}
	c.SetGlobalOptions(global...)
	if a.x.Data != nil {
		c.SetXAxis(a.x.Data) // Validate sets the axis's data from here
	}
	for _, s := range ss {
		data := make([]opts.LineData, len(s.points))
		for i, p := range s.points {
			data[i] = opts.LineData{Value: []float64{roundSig(p[0], 5), roundSig(p[1], 5)}}
		}
		o := []charts.SeriesOpts{
			charts.WithLineChartOpts(opts.LineChart{ShowSymbol: opts.Bool(false), Symbol: "none", Stack: s.stack}),
			charts.WithLineStyleOpts(opts.LineStyle{Color: s.line.color, Type: s.line.dash, Width: 1.5}),
			charts.WithItemStyleOpts(opts.ItemStyle{Color: s.line.color}),
		}
		switch {
		case s.lower:
			o = append(o, charts.WithLineStyleOpts(opts.LineStyle{Opacity: opts.Float(0)}))
		case s.band:
			o = append(o, charts.WithLineStyleOpts(opts.LineStyle{Opacity: opts.Float(0)}),
				charts.WithAreaStyleOpts(opts.AreaStyle{Color: s.line.color, Opacity: opts.Float(0.18)}))
		case a.tooltip == "item":
			o = append(o, charts.WithLineChartOpts(opts.LineChart{ShowSymbol: opts.Bool(true), Symbol: "circle", SymbolSize: 6}))
		}
		c.AddSeries(s.line.label, data, o...)
	}
	c.Validate()
	option, err := json.Marshal(c.JSON())
	if err != nil {
		return chart{}, fmt.Errorf("chart %s: %w", id, err)
	}
	return chart{ID: id, Option: option, Height: 400 + legendRowHeight*rows}, nil
}

const legendRowHeight = 24

// legendRows estimates the rows a legend of these names takes in a chart about 620 pixels
// wide, so the chart can make room under its plot.
func legendRows(names []string) int {
	const width, perChar, perItem = 600, 7, 45
	rows, used := 1, 0
	for _, n := range names {
		w := perItem + perChar*utf8.RuneCountInString(n)
		if used > 0 && used+w > width {
			rows, used = rows+1, 0
		}
		used += w
	}
	return rows
}

// cdfCharts are the TTFT and TPOT distributions, each policy's requests pooled over its seeds.
func cdfCharts(ls []*line) ([]chart, error) {
	var ttft, tpot []series
	for _, l := range ls {
		var ttfts, tpots [][]float64
		for _, id := range l.chartCells {
			c, err := l.exp.cell(id)
			if err != nil {
				return nil, err
			}
			ttfts, tpots = append(ttfts, c.ttft), append(tpots, c.tpot)
		}
		xs, ys := mergeSorted(ttfts), mergeSorted(tpots)
		if len(xs) > 0 {
			ttft = append(ttft, series{line: l, points: cdfPoints(xs)})
		}
		if len(ys) > 0 {
			tpot = append(tpot, series{line: l, points: cdfPoints(ys)})
		}
	}
	// A log axis shows the body and the tail of TTFT alike; it needs positive values.
	ttftAxis := "log"
	for _, s := range ttft {
		if s.points[0][0] <= 0 {
			ttftAxis = "value"
		}
	}
	y := opts.YAxis{Type: "value", Name: "fraction of requests", Min: 0, Max: 1}
	a, err := buildChart("ttft-cdf", axes{
		title: "TTFT distribution", subtitle: "requests pooled over seeds; failed requests left out",
		x: opts.XAxis{Type: ttftAxis, Name: "TTFT (ms)", NameLocation: "middle", NameGap: 28},
		y: y, tooltip: "axis",
	}, ttft)
	if err != nil {
		return nil, err
	}
	b, err := buildChart("tpot-cdf", axes{
		title: "TPOT distribution", subtitle: "requests pooled over seeds; failed and single-token requests left out",
		x: opts.XAxis{Type: "value", Name: "TPOT (ms)", NameLocation: "middle", NameGap: 28, Scale: opts.Bool(true)},
		y: y, tooltip: "axis",
	}, tpot)
	if err != nil {
		return nil, err
	}
	return []chart{a, b}, nil
}

// timeCharts are the time series, each policy's the mean over its seeds.
func timeCharts(ls []*line, prefixHits bool) ([]chart, error) {
	metrics := []struct {
		id, title, unit string
		value           func(*experiments.Sample) float64
	}{
		{"request-throughput", "Request throughput", "req/s", func(s *experiments.Sample) float64 { return s.RequestThroughput }},
		{"output-throughput", "Output throughput", "tok/s", func(s *experiments.Sample) float64 { return s.OutputThroughput }},
		{"requests-waiting", "Queue depth: requests waiting", "requests", func(s *experiments.Sample) float64 { return float64(s.Waiting) }},
		{"requests-running", "Requests running", "requests", func(s *experiments.Sample) float64 { return float64(s.Running) }},
		{"prefix-cache-hit-rate", "Prefix-cache hit rate", "% of prompt tokens", func(s *experiments.Sample) float64 { return 100 * s.PrefixCacheHitRate }},
		{"kv-cache-usage", "KV-cache usage", "% of blocks", func(s *experiments.Sample) float64 { return 100 * s.KVCacheUsage }},
		{"instances", "Instances started (an autoscaled cluster's size)", "instances", func(s *experiments.Sample) float64 { return float64(s.Instances) }},
	}
	runs := make([][][]experiments.Sample, len(ls))
	for i, l := range ls {
		for _, id := range l.chartCells {
			c, err := l.exp.cell(id)
			if err != nil {
				return nil, err
			}
			runs[i] = append(runs[i], c.samples)
		}
	}
	var out []chart
	for _, m := range metrics {
		if m.id == "prefix-cache-hit-rate" && !prefixHits {
			continue // zeros: the notes say why
		}
		if m.id == "instances" && !hasInstances(runs) {
			continue // every cluster kept its size
		}
		var ss []series
		for i, l := range ls {
			if pts := meanOverSeeds(runs[i], m.value); len(pts) > 0 {
				ss = append(ss, series{line: l, points: thin(pts, maxTimePoints)})
			}
		}
		c, err := buildChart(m.id, axes{
			title: m.title, subtitle: "mean over seeds",
			x:       opts.XAxis{Type: "value", Name: "simulated time (s)", NameLocation: "middle", NameGap: 28},
			y:       opts.YAxis{Type: "value", Name: m.unit},
			tooltip: "axis", zoom: true,
		}, ss)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// hasInstances says whether some cluster changed size during its run (an autoscaled
// one): only then is the instances chart worth a place.
func hasInstances(runs [][][]experiments.Sample) bool {
	for _, r := range runs {
		for _, ss := range r {
			for _, s := range ss {
				if s.Instances != ss[0].Instances {
					return true
				}
			}
		}
	}
	return false
}

// loadCharts are median and p99 TTFT against the rate scale, for the experiments that sweep
// it: means over seeds in a band of their 95% confidence intervals. The rate scales are
// categories on the x axis — evenly spaced, as a sweep's usually geometric steps read best,
// and what ECharts needs to stack a band's width on its lower bound.
func loadCharts(ls []*line) ([]chart, error) {
	var rates []float64
	for _, l := range ls {
		if len(l.exp.RateScales()) > 1 {
			for _, p := range l.byRate {
				if !slices.Contains(rates, p.RateScale) {
					rates = append(rates, p.RateScale)
				}
			}
		}
	}
	if len(rates) == 0 {
		return nil, nil
	}
	slices.Sort(rates)
	categories := make([]string, len(rates))
	for i, r := range rates {
		categories[i] = rateLabel(r)
	}
	var out []chart
	for _, q := range []struct {
		id, title string
		stat      func(*experiments.PolicyResult) experiments.Stat
	}{
		{"ttft-p50-vs-load", "Median TTFT vs load", func(p *experiments.PolicyResult) experiments.Stat { return p.MedianTTFTMs }},
		{"ttft-p99-vs-load", "p99 TTFT vs load", func(p *experiments.PolicyResult) experiments.Stat { return p.P99TTFTMs }},
	} {
		logAxis := loadLogAxis(ls, q.stat)
		var ss []series
		for i, l := range ls {
			if len(l.exp.RateScales()) < 2 {
				continue
			}
			var mean, lower, width []point
			for _, p := range l.byRate {
				if p.Seeds == 0 {
					continue
				}
				x := float64(slices.Index(rates, p.RateScale))
				s := q.stat(p)
				lo := bandLow(s, logAxis)
				mean = append(mean, point{x, s.Mean})
				lower = append(lower, point{x, lo})
				width = append(width, point{x, s.Mean + s.CI95 - lo})
			}
			if len(mean) == 0 {
				continue
			}
			stack := fmt.Sprintf("ci-%d", i)
			ss = append(ss, series{line: l, points: lower, stack: stack, lower: true},
				series{line: l, points: width, stack: stack, band: true},
				series{line: l, points: mean})
		}
		subtitle, yType := "mean over seeds, band: 95% confidence interval", "value"
		if logAxis {
			subtitle, yType = "log scale; mean over seeds, band: 95% confidence interval", "log"
		}
		c, err := buildChart(q.id, axes{
			title: q.title, subtitle: subtitle,
			x:       opts.XAxis{Type: "category", Data: categories, Name: "rate scale (× the trace's arrival rate)", NameLocation: "middle", NameGap: 28},
			y:       opts.YAxis{Type: yType, Name: "ms"},
			tooltip: "item",
		}, ss)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// loadLogAxis says whether the latency-vs-load charts need a log axis: when one policy's
// latency is ten times another's (one melting down under load), a linear axis flattens
// every other policy onto zero.
func loadLogAxis(ls []*line, stat func(*experiments.PolicyResult) experiments.Stat) bool {
	lo, hi := math.Inf(1), 0.0
	for _, l := range ls {
		if len(l.exp.RateScales()) < 2 {
			continue
		}
		for _, p := range l.byRate {
			if p.Seeds == 0 {
				continue
			}
			v := stat(p).Mean
			if v <= 0 {
				return false // a log axis cannot show it
			}
			lo, hi = min(lo, v), max(hi, v)
		}
	}
	return hi >= 10*lo
}

// bandLow is the lower edge of a confidence band: the mean less the half-width, kept above
// zero (on a log axis, above a tenth of the mean).
func bandLow(s experiments.Stat, logAxis bool) float64 {
	lo := s.Mean - s.CI95
	if logAxis {
		return max(lo, s.Mean/10)
	}
	return max(lo, 0)
}

// The page's view of the data.
type (
	pageView struct {
		Title string
		// Several is set when the page overlays several experiments.
		Several     bool
		Experiments []experimentView
		LoadCharts  []chart
		LoadNote    string
		ChartNotes  []string
		Charts      []chart
		RateNote    string
		ECharts     template.JS
		Version     string
		ChartsJSON  template.JS
	}
	experimentView struct {
		Label    string
		Facts    []fact
		Verdicts []verdict
		Warnings []string
		Tables   []tableView
		Shares   []shareView
		Classes  []tableView
		Arms     []tableView
		ArmNote  string
		Failed   []failedView
	}
	shareView struct {
		Caption string
		Rate    float64
		Heads   []string
		Rows    []shareRowView
	}
	shareRowView struct {
		Policy  string
		Color   string
		Cells   []cellView
		Warning string
	}
	failedView struct {
		ID, Error, Detail string
	}
	tableView struct {
		Caption string
		Order   string
		Rate    float64
		Heads   []string
		Rows    []rowView
	}
	rowView struct {
		Policy string
		Color  string
		Failed bool
		Cells  []cellView
	}
	// cellView is a table cell "mean ± ci", the half-width allowed to wrap under the mean
	// so that a wide table fits the page.
	cellView struct {
		Mean, CI string
	}
)

func splitCell(v string) cellView {
	if mean, ci, ok := strings.Cut(v, " ± "); ok {
		return cellView{Mean: mean, CI: "± " + ci}
	}
	if mean, rng, ok := strings.Cut(v, " ("); ok { // a share's range over seeds
		return cellView{Mean: mean, CI: "(" + rng}
	}
	return cellView{Mean: v}
}

// WriteHTML writes a self-contained HTML report of one experiment, or of several overlaid
// in the same charts (series named "<experiment> · <policy>"): what ran, the policies
// ranked by goodput and by p99 TTFT at each rate scale, TTFT and TPOT distributions,
// throughput, queue depth, prefix-cache hit rate and KV-cache usage over time, and, for a
// rate sweep, TTFT against load. The ECharts bundle is inlined; the page loads nothing.
// The same directories give the same bytes.
func WriteHTML(w io.Writer, exps []*Experiment) error {
	if len(exps) == 0 {
		return errors.New("report: no experiments")
	}
	labels := experimentLabels(exps)
	ls := lines(exps, labels)
	for _, e := range exps {
		var ids []string
		for _, l := range ls {
			if l.exp == e {
				ids = append(ids, l.chartCells...)
			}
		}
		if err := e.loadCells(ids); err != nil {
			return err
		}
	}
	colors := map[*Experiment]map[string]string{}
	for _, l := range ls {
		if colors[l.exp] == nil {
			colors[l.exp] = map[string]string{}
		}
		colors[l.exp][l.name] = l.color
	}

	page := pageView{Version: echartsjs.Version}
	var names []string
	for i, e := range exps {
		names = append(names, labels[i])
		ev := experimentView{Label: labels[i], Facts: e.facts()}
		for _, c := range e.failedCells() {
			f := failedView{ID: c.ID, Error: firstLine(c.Error)}
			if f.Error != c.Error {
				f.Detail = c.Error
			}
			ev.Failed = append(ev.Failed, f)
		}
		groups := e.rateGroups()
		for _, g := range groups {
			for _, t := range []struct {
				order, caption string
				ps             []*experiments.PolicyResult
			}{{"goodput", "goodput", g.ByGoodput}, {"p99-ttft", "p99 TTFT", g.ByP99TTFT}} {
				columns := tableColumns(t.ps)
				heads := []string{"#", "policy"}
				for _, c := range columns {
					heads = append(heads, c.Head)
				}
				tv := tableView{Caption: rankedCaption(g.Rate, len(groups) > 1, t.caption), Order: t.order, Rate: g.Rate, Heads: heads}
				for _, p := range t.ps {
					row := rowView{Policy: p.Name(), Color: colors[e][p.Name()], Failed: p.FailedCells > 0}
					for _, c := range columns {
						row.Cells = append(row.Cells, splitCell(c.Value(p)))
					}
					tv.Rows = append(tv.Rows, row)
				}
				ev.Tables = append(ev.Tables, tv)
			}
		}
		for _, g := range groups {
			if hasClasses(g.ByGoodput) {
				ev.Classes = append(ev.Classes, breakdownTable(g, classCaption(g.Rate, len(groups) > 1), "class", classHeads, colors[e],
					func(p *experiments.PolicyResult) (parts [][]string) {
						for _, c := range p.Classes {
							parts = append(parts, classCells(p, c))
						}
						return parts
					}))
			}
			if hasArms(g.ByGoodput) {
				ev.Arms = append(ev.Arms, breakdownTable(g, armCaption(g.Rate, len(groups) > 1), "arm", armHeads, colors[e],
					func(p *experiments.PolicyResult) (parts [][]string) {
						for _, a := range p.Arms {
							parts = append(parts, armCells(p, a))
						}
						return parts
					}))
				ev.ArmNote = armNote
			}
		}
		// The notes on identical results and missing prefix information go by the charts
		// they explain (ChartNotes).
		ev.Verdicts, ev.Warnings = e.verdicts(), e.starvedWarnings()
		for _, t := range e.shareTables() {
			sv := shareView{Caption: shareCaption(t.Rate, len(groups) > 1), Rate: t.Rate, Heads: []string{"policy"}}
			for i := range t.Instances {
				sv.Heads = append(sv.Heads, fmt.Sprintf("instance %d %%", i))
			}
			sv.Heads = append(sv.Heads, "idle instances")
			for _, r := range t.Rows {
				rv := shareRowView{Policy: r.Policy.Name(), Color: colors[e][r.Policy.Name()], Warning: r.Warning}
				for i := range t.Instances {
					v := "–"
					if i < len(r.Shares) {
						v = r.Shares[i]
					}
					rv.Cells = append(rv.Cells, splitCell(v))
				}
				sv.Rows = append(sv.Rows, rv)
			}
			ev.Shares = append(ev.Shares, sv)
		}
		page.Experiments = append(page.Experiments, ev)
	}
	page.Several = len(exps) > 1
	page.Title = "Experiment " + names[0]
	if len(names) > 1 {
		page.Title = "Experiments " + strings.Join(names, ", ")
	}
	var notes []string
	for i, e := range exps {
		if len(e.RateScales()) > 1 || len(exps) > 1 {
			notes = append(notes, labels[i]+" at rate "+rateLabel(chartRate(e)))
		}
	}
	if len(notes) > 0 {
		page.RateNote = "Each experiment at its highest rate scale (the tables and the latency-vs-load charts cover every rate): " + strings.Join(notes, "; ") + "."
	}

	var err error
	if page.LoadCharts, err = loadCharts(ls); err != nil {
		return err
	}
	if loadLogAxis(ls, func(p *experiments.PolicyResult) experiments.Stat { return p.P99TTFTMs }) ||
		loadLogAxis(ls, func(p *experiments.PolicyResult) experiments.Stat { return p.MedianTTFTMs }) {
		page.LoadNote = "On a log axis: the policies' latencies differ by ten times or more, and on a linear axis all but the slowest would lie flat on zero."
	}
	prefixHits := false
	for i, e := range exps {
		prefixHits = prefixHits || e.hasPrefixHits()
		for _, n := range []string{e.identicalNote(), e.noPrefixNote()} {
			if n == "" {
				continue
			}
			if len(exps) > 1 {
				n = labels[i] + ": " + n
			}
			page.ChartNotes = append(page.ChartNotes, n)
		}
	}
	cdfs, err := cdfCharts(ls)
	if err != nil {
		return err
	}
	times, err := timeCharts(ls, prefixHits)
	if err != nil {
		return err
	}
	page.Charts = append(cdfs, times...)
	all, err := json.Marshal(append(slices.Clone(page.LoadCharts), page.Charts...))
	if err != nil {
		return err
	}
	page.ChartsJSON = template.JS(all)
	page.ECharts = template.JS(echartsjs.Script())
	return pageTemplate.Execute(w, page)
}

var pageTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"inc": func(i int) int { return i + 1 },
}).Parse(`{{define "cell"}}{{.Mean}}{{if .CI}} <span class="ci">{{.CI}}</span>{{end}}{{end}}<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1500px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; }
table.ranked, table.shares { border-collapse: collapse; margin: 12px 0 20px; font-variant-numeric: tabular-nums; }
table.ranked caption, table.shares caption { text-align: left; font-weight: 600; padding: 4px 0; }
table.ranked th, table.ranked td, table.shares th, table.shares td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: right; }
table.ranked th, table.shares th { background: #f6f6f6; font-weight: 600; vertical-align: bottom; }
table.ranked td { white-space: nowrap; }
table.ranked td .ci, table.shares td .ci { color: #777; font-size: 12px; }
table.ranked td.policy, table.shares td.policy, table.ranked th:nth-child(2), table.shares th:first-child { text-align: left; white-space: normal; overflow-wrap: anywhere; min-width: 14em; }
table.ranked tr.failed { background: #fff3f0; }
table.shares tr.starved { background: #fff8e6; }
table.shares td.idle, table.shares th:last-child { text-align: left; }
@media (max-width: 1600px) { table.ranked td .ci { display: block; } }
.verdicts { font-size: 15px; padding-left: 20px; } .verdicts li { margin: 4px 0; }
.warning { color: #8a4b00; background: #fff8e6; padding: 4px 8px; border-radius: 4px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.failed-cells li { color: #a33; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(620px, 1fr)); gap: 16px; }
.chart { border: 1px solid #eee; border-radius: 4px; }
.note { color: #555; }
.scroll { overflow-x: auto; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
{{range .Experiments}}<section class="answer" data-experiment="{{.Label}}">
{{if $.Several}}<h2>{{.Label}}</h2>
{{end}}<ul class="verdicts">{{range .Verdicts}}<li data-rate="{{.Rate}}">{{.Text}}</li>{{end}}</ul>
{{range .Warnings}}<p class="warning">⚠ {{.}}</p>
{{end}}{{if .Failed}}<p class="warning">⚠ {{len .Failed}} failed cells (listed under the tables).</p>
{{end}}<dl class="facts">{{range .Facts}}<dt>{{.Label}}</dt><dd>{{.Value}}</dd>{{end}}</dl>
</section>
{{end}}{{if .LoadCharts}}<h2>Latency vs load</h2>
{{if .LoadNote}}<p class="note">{{.LoadNote}}</p>
{{end}}<div class="charts">{{range .LoadCharts}}<div class="chart" id="{{.ID}}" style="height: {{.Height}}px"></div>{{end}}</div>
{{end}}<h2>Distributions and time series</h2>
{{if .RateNote}}<p class="note">{{.RateNote}}</p>
{{end}}{{range .ChartNotes}}<p class="note chart-note">{{.}}</p>
{{end}}<div class="charts">{{range .Charts}}<div class="chart" id="{{.ID}}" style="height: {{.Height}}px"></div>{{end}}</div>
<h2>Tables</h2>
{{range .Experiments}}<section class="experiment" data-experiment="{{.Label}}">
{{if $.Several}}<h3>{{.Label}}</h3>
{{end}}{{range .Tables}}<div class="scroll"><table class="ranked" data-order="{{.Order}}" data-rate="{{.Rate}}">
<caption>{{.Caption}}</caption>
<thead><tr>{{range .Heads}}<th>{{.}}</th>{{end}}</tr></thead>
<tbody>
{{range $i, $r := .Rows}}<tr{{if .Failed}} class="failed"{{end}}><td>{{inc $i}}</td><td class="policy"><span class="swatch" style="background: {{.Color}}"></span>{{.Policy}}</td>{{range .Cells}}<td>{{template "cell" .}}</td>{{end}}</tr>
{{end}}</tbody>
</table></div>
{{end}}{{range .Classes}}<div class="scroll"><table class="classes" data-rate="{{.Rate}}">
<caption>{{.Caption}}</caption>
<thead><tr>{{range .Heads}}<th>{{.}}</th>{{end}}</tr></thead>
<tbody>
{{range .Rows}}<tr{{if .Failed}} class="failed"{{end}}><td class="policy"><span class="swatch" style="background: {{.Color}}"></span>{{.Policy}}</td>{{range .Cells}}<td>{{template "cell" .}}</td>{{end}}</tr>
{{end}}</tbody>
</table></div>
{{end}}{{range .Arms}}<div class="scroll"><table class="arms" data-rate="{{.Rate}}">
<caption>{{.Caption}}</caption>
<thead><tr>{{range .Heads}}<th>{{.}}</th>{{end}}</tr></thead>
<tbody>
{{range .Rows}}<tr{{if .Failed}} class="failed"{{end}}><td class="policy"><span class="swatch" style="background: {{.Color}}"></span>{{.Policy}}</td>{{range .Cells}}<td>{{template "cell" .}}</td>{{end}}</tr>
{{end}}</tbody>
</table></div>
{{end}}{{if .ArmNote}}<p class="note">{{.ArmNote}}</p>
{{end}}{{range .Shares}}<div class="scroll"><table class="shares" data-rate="{{.Rate}}">
<caption>{{.Caption}}</caption>
<thead><tr>{{range .Heads}}<th>{{.}}</th>{{end}}</tr></thead>
<tbody>
{{range .Rows}}<tr{{if .Warning}} class="starved"{{end}}><td class="policy"><span class="swatch" style="background: {{.Color}}"></span>{{.Policy}}</td>{{range .Cells}}<td>{{template "cell" .}}</td>{{end}}<td class="idle">{{if .Warning}}⚠ {{.Warning}}{{else}}none{{end}}</td></tr>
{{end}}</tbody>
</table></div>
{{end}}<p class="note">Means over seeds ± 95% confidence half-widths (Student's t){{if .Shares}}; an instance's share of the requests is the mean over seeds (the lowest–highest seed){{end}}.</p>
{{if .Failed}}<h3>⚠ Failed cells</h3>
<ul class="failed-cells">{{range .Failed}}<li><code>{{.ID}}</code>: {{.Error}}{{if .Detail}}<details><summary>full error</summary><pre>{{.Detail}}</pre></details>{{end}}</li>{{end}}</ul>
{{end}}</section>
{{end}}<p class="note">Charts by Apache ECharts {{.Version}}, embedded.</p>
<script>{{.ECharts}}</script>
<script>
(function () {
  var specs = {{.ChartsJSON}};
  var drawn = [];
  specs.forEach(function (s) {
    var c = echarts.init(document.getElementById(s.id));
    c.setOption(s.option);
    drawn.push(c);
  });
  window.addEventListener("resize", function () { drawn.forEach(function (c) { c.resize(); }); });
})();
</script>
</body>
</html>
`))

// breakdownTable is a rate's table of each policy's results split into parts (request
// classes, A/B arms): a row per policy and part, parts giving each part's cells under heads.
func breakdownTable(g rateGroup, caption, order string, heads []string, colors map[string]string, parts func(p *experiments.PolicyResult) [][]string) tableView {
	tv := tableView{Caption: caption, Order: order, Rate: g.Rate, Heads: append([]string{"policy"}, heads...)}
	for _, p := range g.ByGoodput {
		for _, cells := range parts(p) {
			row := rowView{Policy: p.Name(), Color: colors[p.Name()], Failed: p.FailedCells > 0}
			for _, v := range cells {
				row.Cells = append(row.Cells, splitCell(v))
			}
			tv.Rows = append(tv.Rows, row)
		}
	}
	return tv
}
