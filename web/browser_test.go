package web

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"servelab/experiments"
	"servelab/internal/webdriver"
	"servelab/internal/webdriver/wdtest"
)

// chartStats is what the page's ECharts instances hold: per chart, the series names and
// their data points.
type chartStats struct {
	Ready    bool                      `json:"ready"`
	Status   string                    `json:"status"`
	Messages int                       `json:"messages"`
	Updates  int                       `json:"updates"`
	View     string                    `json:"view"`
	Charts   map[string]map[string]int `json:"charts"`
}

func (c chartStats) points() int {
	n := 0
	for _, series := range c.Charts {
		for _, p := range series {
			n += p
		}
	}
	return n
}

// chartStatsJS reads the charts back from ECharts itself (each line's data as the chart
// holds it, by series id; a policy's band series, ids with '#', left out), not from the
// page's own bookkeeping.
const chartStatsJS = `
const d = window.dash || {};
const out = {ready: !!d.ready, status: d.status || '', messages: d.messages || 0, updates: d.updates || 0,
  view: d.view || '', charts: {}};
for (const div of document.querySelectorAll('[data-chart]')) {
  const chart = echarts.getInstanceByDom(div);
  if (!chart) continue;
  const series = {};
  for (const s of chart.getModel().getSeries()) {
    if (!String(s.id).includes('#')) series[s.id] = s.getRawData().count();
  }
  out.charts[div.dataset.chart] = series;
}
return out;`

// TestBrowser drives headless Chromium against the dashboard: the live page of a running
// experiment draws charts from the run's samples and keeps adding points as the run goes on;
// the compare page overlays two runs.
func TestBrowser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d := newTestDash(t, nil)

	// Long enough to watch: cells one after another, many samples. Under the race detector
	// the simulator is several times slower, so fewer cells do.
	matrix := "policies: {routers: [round-robin, least-request, weighted], evict: [lru, lfu]}\nseeds: [1, 2, 3, 4]\n"
	if raceEnabled {
		matrix = "policies: {routers: [round-robin, least-request, weighted]}\nseeds: [1, 2]\n"
	}
	live := writeFile(t, filepath.Join(d.specs, "live.yaml"), fmt.Sprintf("name: browser-live\n"+
		"workload: {trace: %s, rate_scale: 4}\ncluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\n%s", azureSlice, matrix))
	// The small run replays Mooncake, whose requests carry prefix hash ids: its live page
	// draws the hit-rate chart; the Azure run's says there is none to draw.
	mooncake, err := filepath.Abs("../examples/traces/mooncake_conv_500.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	small := writeFile(t, filepath.Join(d.specs, "small.yaml"), fmt.Sprintf("name: browser-small\n"+
		"workload: {trace: %s, max_requests: 400}\ncluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\n"+
		"policies: {routers: [round-robin, prefix-affinity]}\n", mooncake))

	s := wdtest.Session(ctx, t, 1400, 1300)
	shots := t.TempDir()
	screenshot := func(name string) {
		t.Helper()
		b, err := s.Screenshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(bytes.NewReader(b)); err != nil {
			t.Fatalf("screenshot is not a PNG: %v", err)
		}
		p := filepath.Join(shots, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
		if keep := os.Getenv("SERVELAB_SCREENSHOTS"); keep != "" { // e.g. a CI artifact directory
			os.MkdirAll(keep, 0o755)
			os.WriteFile(filepath.Join(keep, name), b, 0o644)
		}
	}
	stats := func() chartStats {
		t.Helper()
		var st chartStats
		if err := s.Execute(ctx, chartStatsJS, nil, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}

	// waitStats polls the page until cond holds, for up to two minutes (a loaded machine
	// runs the simulator and the browser slowly); it fails when the deadline passes or when
	// stop says the condition can no longer come true.
	waitStats := func(what string, cond func(chartStats) bool, stop ...func(chartStats) bool) chartStats {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			st := stats()
			if cond(st) {
				return st
			}
			for _, s := range stop {
				if s(st) {
					t.Fatalf("waiting for %s, the page got where it cannot happen any more: %+v", what, st)
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s: %+v", what, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// The index page starts the small run, as a person would: the form posts it and the
	// browser lands on its live page, which shows it to the end.
	if err := s.Navigate(ctx, d.hs.URL+"/"); err != nil {
		t.Fatal(err)
	}
	if err := s.Execute(ctx, `const form = document.getElementById('start');
form.spec.value = arguments[0];
form.sample_interval.value = '0.5';
form.requestSubmit();`, []any{small}, nil); err != nil {
		t.Fatal(err)
	}
	var at string
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(at, "/runs/"); time.Sleep(20 * time.Millisecond) {
		if at, err = s.CurrentURL(ctx); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			var msg string
			s.Execute(ctx, `const m = document.getElementById('start-msg'); return m ? m.textContent : ''`, nil, &msg)
			t.Fatalf("after submitting the start form the browser is at %s: %s", at, msg)
		}
	}
	if at != d.hs.URL+"/runs/browser-small" || d.srv.Job("browser-small") == nil {
		t.Fatalf("after starting a run the browser is at %q", at)
	}
	smallID := "browser-small"
	waitStats("the small run's live page to show it done", func(st chartStats) bool {
		return st.Status == StatusDone && st.points() > 0
	})
	if pv := prefixView(ctx, t, s); !pv.Chart || pv.Note != "" {
		t.Errorf("the live page of a Mooncake run (prefix hash ids): hit-rate chart shown %v, note %q; want the chart", pv.Chart, pv.Note)
	}

	// The live page of the long run, open before it starts (as another tab would be), so
	// that the whole run is watched.
	spec, err := experiments.Load(live)
	if err != nil {
		t.Fatal(err)
	}
	norm, _ := spec.Normalized()
	writeFile(t, filepath.Join(d.runs, "browser-live", "spec.yaml"), string(norm))
	if err := s.Navigate(ctx, d.hs.URL+"/runs/browser-live"); err != nil {
		t.Fatal(err)
	}
	waitStats("the live page's snapshot", func(st chartStats) bool { return st.Ready && st.Status == StatusNew })
	var heading string
	if err := s.Execute(ctx, `return document.querySelector('main h2').textContent`, nil, &heading); err != nil {
		t.Fatal(err)
	}
	if heading != "browser-live" { // the run's id is the experiment's name: said once
		t.Errorf("the live page's heading is %q", heading)
	}
	job := d.srv.Job(d.start(StartRequest{Spec: live}))

	// Its charts fill with the run's samples, one line per policy (the mean over its seeds),
	// and keep growing while it runs: wait for a later update to add points while the run
	// is still running (conditions with deadlines, not a count of growths in a fixed time,
	// which a loaded machine made flaky).
	policies := len(job.Spec.Cells()) / len(job.Spec.Seeds)
	first := waitStats("data points on the live page", func(st chartStats) bool { return st.points() > 0 })
	if len(first.Charts) != len(chartKeys) {
		t.Errorf("live page has charts %v", first.Charts)
	}
	done := func(st chartStats) bool { return st.Status != StatusRunning && st.Status != StatusNew }
	grown := waitStats("the live page to draw new points while the run goes on", func(st chartStats) bool {
		return st.Status == StatusRunning && st.Updates > first.Updates && st.points() > first.points()
	}, done)
	screenshot("live-running.png")
	for key, series := range grown.Charts {
		if grown.View != "policies" || len(series) != policies {
			t.Errorf("chart %s in view %q: %d lines, want one per policy (%d)", key, grown.View, len(series), policies)
		}
	}
	t.Logf("live page: %d points from %d messages, then %d points from %d while the run went on",
		first.points(), first.Messages, grown.points(), grown.Messages)

	if _, err := job.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.srv.Job(smallID).Wait(); err != nil {
		t.Fatal(err)
	}
	// Every sample of every cell ends up on the charts: a policy's line has a point for
	// each sample of its longest seed; with every seed shown, one line per cell.
	var total, policyPoints int
	longest := map[string]int{}
	for _, c := range job.Spec.Cells() {
		n, err := readTimeSeries(job.Dir, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		k := c.Router + "/" + c.Batch + "/" + c.Evict
		longest[k] = max(longest[k], n)
	}
	for _, n := range longest {
		policyPoints += n
	}
	waitStats(fmt.Sprintf("the live page to show the run done, its policies' lines with %d points", policyPoints), func(st chartStats) bool {
		return st.Status == StatusDone && sum(st.Charts["throughput"]) == policyPoints
	})
	screenshot("live-done.png")
	// The Azure slice carries no prefix hash ids: a note instead of a hit-rate chart of zeros.
	if pv := prefixView(ctx, t, s); pv.Chart || !strings.Contains(pv.Note, "no prefix information (hash ids)") {
		t.Errorf("the live page of an Azure run (no prefix hash ids): hit-rate chart shown %v, note %q; want the note", pv.Chart, pv.Note)
	}
	if err := s.Execute(ctx, `const n = document.getElementById('no-prefix'); if (n) n.scrollIntoView()`, nil, nil); err != nil {
		t.Fatal(err)
	}
	screenshot("live-no-prefix.png")
	if err := s.Execute(ctx, `window.scrollTo(0, 0)`, nil, nil); err != nil {
		t.Fatal(err)
	}
	// lru and lfu on the Azure slice (no shared prefixes) run alike: the page says so.
	var identical string
	if err := s.Execute(ctx, `return document.getElementById('identical').textContent`, nil, &identical); err != nil {
		t.Fatal(err)
	}
	if wantSame := !raceEnabled; wantSame != strings.Contains(identical, "round-robin / lru = round-robin / lfu") {
		t.Errorf("the live page's note on identical lines: %q (the matrix crosses lru with lfu: %v)", identical, wantSame)
	}
	if err := s.Execute(ctx, `document.getElementById('show-seeds').click()`, nil, nil); err != nil {
		t.Fatal(err)
	}
	final := waitStats(fmt.Sprintf("every seed's line, with %d samples in all", total), func(st chartStats) bool {
		return st.View == "seeds" && sum(st.Charts["throughput"]) == total
	})
	for key, series := range final.Charts {
		if len(series) != len(job.Spec.Cells()) {
			t.Errorf("chart %s: %d series, want one per cell (%d)", key, len(series), len(job.Spec.Cells()))
		}
	}
	screenshot("live-seeds.png")

	// The compare page overlays both runs.
	if err := s.Navigate(ctx, d.hs.URL+"/compare?run=browser-live&run="+smallID); err != nil {
		t.Fatal(err)
	}
	// One line per run and policy; with every seed shown, one per cell.
	for _, view := range []struct {
		name            string
		fromLive, small int
	}{{"policies", policies, 2}, {"seeds", len(job.Spec.Cells()), 2}} {
		if view.name == "seeds" {
			if err := s.Execute(ctx, `document.getElementById('show-seeds').click()`, nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		cmp := waitStats("the compare page to draw "+view.name, func(st chartStats) bool { return st.Ready && st.View == view.name })
		for key, series := range cmp.Charts {
			var fromLive, fromSmall int
			for name, points := range series {
				if points == 0 && key != "hit" && key != "ttft" {
					t.Errorf("chart %s: series %s has no points", key, name)
				}
				switch {
				case strings.HasPrefix(name, "browser-live: "):
					fromLive++
				case strings.HasPrefix(name, smallID+": "):
					fromSmall++
				}
			}
			if fromLive != view.fromLive || fromSmall != view.small {
				t.Errorf("compare chart %s, %s: %d series of browser-live, %d of %s; want %d and %d", key, view.name, fromLive, fromSmall, smallID, view.fromLive, view.small)
			}
		}
		if view.name == "policies" {
			screenshot("compare.png")
		}
	}
	// One of the two runs has prefix hash ids: the chart stays, and a line names the other.
	if pv := prefixView(ctx, t, s); !pv.Chart || pv.Note != "" || !strings.Contains(pv.Runs, "trace of browser-live:") {
		t.Errorf("the compare page of a Mooncake and an Azure run: hit-rate chart shown %v, note %q, line %q; want the chart and a line naming browser-live", pv.Chart, pv.Note, pv.Runs)
	}
	var rows int
	if err := s.Execute(ctx, `return document.querySelectorAll('#summaries tbody tr').length`, nil, &rows); err != nil {
		t.Fatal(err)
	}
	if want := len(job.Spec.Cells())/len(job.Spec.Seeds) + 2; rows != want {
		t.Errorf("summary table has %d rows, want one per policy of each run (%d)", rows, want)
	}

	// The Azure run alone: no run has prefix hash ids, so the note stands in the chart's place.
	if err := s.Navigate(ctx, d.hs.URL+"/compare?run=browser-live"); err != nil {
		t.Fatal(err)
	}
	waitStats("the compare page of the Azure run", func(st chartStats) bool { return st.Ready })
	if pv := prefixView(ctx, t, s); pv.Chart || !strings.Contains(pv.Note, "no prefix information (hash ids)") || pv.Runs != "" {
		t.Errorf("the compare page of an Azure run: hit-rate chart shown %v, note %q, line %q; want the note alone", pv.Chart, pv.Note, pv.Runs)
	}
}

// prefixShown is what a page shows for the prefix-cache hit rate: whether its chart is
// displayed, the note shown in its place ("" when none is) and the compare page's line
// naming the runs without prefix hash ids.
type prefixShown struct {
	Chart bool   `json:"chart"`
	Note  string `json:"note"`
	Runs  string `json:"runs"`
}

func prefixView(ctx context.Context, t *testing.T, s *webdriver.Session) prefixShown {
	t.Helper()
	var pv prefixShown
	err := s.Execute(ctx, `const shown = e => !!e && e.offsetHeight > 0;
const note = document.getElementById('no-prefix'), runs = document.getElementById('prefix-runs');
return {chart: shown(document.getElementById('chart-hit')), note: shown(note) ? note.textContent : '',
  runs: runs ? runs.textContent : ''};`, nil, &pv)
	if err != nil {
		t.Fatal(err)
	}
	return pv
}

var chartKeys = []string{"throughput", "output", "waiting", "running", "kv", "hit", "ttft"}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func readTimeSeries(dir, cell string) (int, error) {
	ts, err := experiments.ReadTimeSeries(dir, cell)
	return len(ts), err
}
