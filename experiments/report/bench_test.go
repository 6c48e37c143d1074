package report

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"servelab/experiments"
)

// fullTrace is Azure's whole conversation trace, where the shared data is checked out.
const fullTrace = "../../../shared/traces/azure_llm_2023_conv.csv"

var bench struct {
	once sync.Once
	dir  string
	err  error
}

// BenchmarkReport reports examples/azure-routers.yaml's experiment — 3 routers x 2 evictors
// x 3 seeds — on the full Azure conversation trace when it is present, else on the shipped
// 3000-request slice: loading the directory (Parquet columns, time series) and writing the
// HTML and the Markdown. It reports the page's size in bytes.
func BenchmarkReport(b *testing.B) {
	trace := fullTrace
	if _, err := os.Stat(trace); err != nil {
		b.Logf("%s absent: using the shipped slice", fullTrace)
		trace = slice
	}
	bench.once.Do(func() {
		var abs string
		if abs, bench.err = filepath.Abs(trace); bench.err != nil {
			return
		}
		spec, err := experiments.Parse([]byte(strings.ReplaceAll("name: azure-routers\n"+
			"workload: {trace: TRACE, rate_scale: 4}\ncluster: {instances: 4, model: llama-3.1-8b, gpu: a100-80g}\n"+
			"policies: {routers: [round-robin, least-request, weighted], evict: [lru, lfu]}\nseeds: [1, 2, 3]\n"+
			"slo: {ttft_ms: 2000, tpot_ms: 100}\n", "TRACE", abs)), filepath.Join(fixtureRoot, "bench.yaml"))
		if err != nil {
			bench.err = err
			return
		}
		bench.dir = filepath.Join(fixtureRoot, "bench")
		start := time.Now()
		_, bench.err = experiments.Run(context.Background(), spec, experiments.Options{Out: bench.dir})
		b.Logf("the experiment ran in %v", time.Since(start))
	})
	if bench.err != nil {
		b.Fatal(bench.err)
	}
	var size int
	for b.Loop() {
		e, err := Load(bench.dir)
		if err != nil {
			b.Fatal(err)
		}
		var page bytes.Buffer
		if err := WriteHTML(&page, []*Experiment{e}); err != nil {
			b.Fatal(err)
		}
		if err := WriteMarkdown(io.Discard, e); err != nil {
			b.Fatal(err)
		}
		size = page.Len()
	}
	b.ReportMetric(float64(size), "html-bytes")
}
