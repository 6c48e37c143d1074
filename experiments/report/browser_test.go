package report

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"servelab/experiments"
	"servelab/internal/webdriver/wdtest"
)

// wideExperiment has the long policy names and wide numbers that made the ranked tables
// overflow a 1400-pixel window: llm-d's weighted spec, latencies of a router melting down.
func wideExperiment() *Experiment {
	var ps []experiments.PolicyResult
	var cells []experiments.CellResult
	for i, router := range []string{"weighted:prefix=3,queue=2,kv=2", "least-request", "prefix-affinity"} {
		for _, rate := range []float64{0.25, 1} {
			p := experiments.PolicyResult{Router: router, Batch: "vllm:max_num_batched_tokens=2048,max_num_seqs=256", Evict: "lfu",
				RateScale: rate, Seeds: 2}
			big := experiments.Stat{Mean: 4339011.123 * float64(i+1), CI95: 1234567.8}
			for _, s := range []*experiments.Stat{&p.RequestGoodput, &p.RequestThroughput, &p.OutputThroughput, &p.MeanTTFTMs,
				&p.MedianTTFTMs, &p.P99TTFTMs, &p.MedianTPOTMs, &p.P99TPOTMs, &p.Preemptions} {
				*s = big
			}
			p.PrefixCacheHitRate = experiments.Stat{Mean: 0.294, CI95: 0.0146}
			// A day of 64 H100s: cost and goodput per dollar columns at their widest.
			p.CostUSD, p.GoodputPerDollar = &experiments.Stat{Mean: 4608.12, CI95: 123.45}, &experiments.Stat{Mean: 1234.56, CI95: 98.7}
			ps = append(ps, p)
			cells = append(cells, experiments.CellResult{Cell: experiments.Cell{Router: p.Router, Batch: p.Batch, Evict: p.Evict, RateScale: rate}, Status: "error", Error: "not run"})
		}
	}
	return &Experiment{Dir: "wide", Spec: experiments.Spec{Name: "wide", Workload: experiments.Workload{RateScale: experiments.RateScales{0.25, 1}}},
		Results: experiments.Results{Experiment: "wide", Policies: ps, Cells: cells}}
}

// layoutJS measures the page: tables wider than their box, a page that scrolls sideways,
// and the charts ECharts has drawn.
const layoutJS = `const out = {overflow: [], charts: 0, drawn: 0};
if (document.readyState !== 'complete' || typeof echarts === 'undefined') return out;
for (const t of document.querySelectorAll('table')) {
  const box = t.parentElement;
  if (t.getBoundingClientRect().width > box.clientWidth + 1) out.overflow.push(t.querySelector('caption').textContent + ': ' + Math.round(t.getBoundingClientRect().width) + ' px in ' + box.clientWidth);
}
out.pageWide = document.documentElement.scrollWidth > window.innerWidth;
for (const div of document.querySelectorAll('.chart')) { out.charts++; if (echarts.getInstanceByDom(div)) out.drawn++; }
return out;`

// TestReportInChromium opens reports in headless Chromium at 1400 x 1000 pixels: no table
// is wider than the page, and every chart is drawn.
func TestReportInChromium(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := wdtest.Session(ctx, t, 1400, 1000)
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		exp  *Experiment
	}{{"wide", wideExperiment()}, {"sweep", load(t, "sweep")}, {"matrix", load(t, "matrix")}} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".html")
			if err := os.WriteFile(path, []byte(renderHTML(t, tt.exp)), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := s.Navigate(ctx, "file://"+path); err != nil {
				t.Fatal(err)
			}
			type layout struct {
				Overflow []string `json:"overflow"`
				PageWide bool     `json:"pageWide"`
				Charts   int      `json:"charts"`
				Drawn    int      `json:"drawn"`
			}
			var got layout
			// The page draws its charts once loaded: wait for them, with a deadline.
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				got = layout{}
				if err := s.Execute(ctx, layoutJS, nil, &got); err != nil {
					t.Fatal(err)
				}
				if got.Charts > 0 && got.Drawn == got.Charts || time.Now().After(deadline) {
					break
				}
			}
			if len(got.Overflow) > 0 || got.PageWide {
				t.Errorf("at 1400 px, tables wider than the page: %q (page scrolls sideways: %v)", got.Overflow, got.PageWide)
			}
			if got.Drawn != got.Charts {
				t.Errorf("%d of %d charts drawn", got.Drawn, got.Charts)
			}
		})
	}
}
