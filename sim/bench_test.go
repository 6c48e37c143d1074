package sim

import (
	"io"
	"os"
	"testing"

	"servelab/metrics"
	"servelab/traces"
)

const azureTrace = "../../shared/traces/azure_llm_2023_conv.csv"

// BenchmarkAzureConv replays the whole Azure LLM 2023 conversation trace (19,366
// requests) on 8 H100s serving Llama-3.1-8B, the headline workload.
func BenchmarkAzureConv(b *testing.B) {
	if _, err := os.Stat(azureTrace); err != nil {
		b.Skip("the shared Azure trace is not beside the repo (../shared/traces)")
	}
	spec := DefaultClusterSpec()
	spec.Instances = 8
	spec.Router = "least-request"
	for range b.N {
		cfg, err := spec.Build(metrics.SLO{})
		if err != nil {
			b.Fatal(err)
		}
		r, c, err := traces.Open(azureTrace, "")
		if err != nil {
			b.Fatal(err)
		}
		res, err := Run(cfg, r)
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(res.Steps), "steps")
		b.ReportMetric(float64(res.Events), "events")
	}
}

// blisRows is BLIS's default workload as scripts/bench.sh gives it to servelab: n requests
// of about 512 prompt and 512 output tokens (lognormal with BLIS's mean and standard
// deviation, 256) at 1 request/s, seed 42; with prefix groups, prompts share a 512-token
// prefix with their group.
func blisRows(b *testing.B, n int, rate float64, groups int) []traces.Row {
	b.Helper()
	cfg := traces.SynthConfig{Requests: n, Rate: rate, InputMean: 512, OutputMean: 512,
		InputSigma: 0.472, OutputSigma: 0.472, BlockSize: 16, Seed: 42}
	if groups > 0 {
		cfg.PrefixGroups, cfg.PrefixTokens = groups, 512
	}
	syn, err := traces.NewSynth(cfg)
	if err != nil {
		b.Fatal(err)
	}
	var rows []traces.Row
	for {
		row, err := syn.Next()
		if err == io.EOF {
			return rows
		}
		if err != nil {
			b.Fatal(err)
		}
		rows = append(rows, row)
	}
}

// BenchmarkBLISWorkload replays BLIS's 10,000-request default workload (one H100 serving
// Qwen2.5-7B, roofline) with the router's views exact ("fresh": scrape 0, KV-event delay
// 0) and as stale as the real router's (DefaultClusterSpec's 50 ms and 2 ms), and the same
// requests with shared prefixes at 8 request/s on 8 instances behind the precise
// prefix-cache scorer, where the KV-event index is read at every arrival.
func BenchmarkBLISWorkload(b *testing.B) {
	for _, w := range []struct {
		name      string
		instances int
		router    string
		rate      float64
		groups    int
	}{
		{"1xH100-round-robin", 1, "round-robin", 1, 0},
		{"8xH100-precise-prefix", 8, "weighted:precise-prefix=3,prefix=0,queue=2,kv=2", 8, 64},
	} {
		rows := blisRows(b, 10000, w.rate, w.groups)
		for _, views := range []string{"fresh", "stale"} {
			b.Run(w.name+"/"+views, func(b *testing.B) {
				spec := DefaultClusterSpec()
				spec.Instances, spec.Router, spec.Model = w.instances, w.router, "qwen2.5-7b"
				if views == "fresh" {
					spec.ScrapeInterval, spec.KVEventDelay = 0, 0
				}
				for range b.N {
					cfg, err := spec.Build(metrics.SLO{})
					if err != nil {
						b.Fatal(err)
					}
					res, err := Run(cfg, &sliceReader{rows: rows})
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(res.Steps), "steps")
				}
			})
		}
	}
}

// BenchmarkDisagg is `make bench`'s 1,000,000-request, 64-instance workload (1024 prompt
// and 256 output tokens on average, `servelab trace synth`'s defaults otherwise, 64 prefix groups, 1000 requests/s on 64 H100s), cut to
// 20,000 requests on 16 instances at a quarter of the rate, with and without
// disaggregation: 4 prefill + 12 decode instances (llm-d's pd-profile-handler,
// least-request in both profiles, the prefix-based decider reading the decode instances'
// KV-event index), against one pool of 16. scripts/bench.sh runs the whole workload
// disaggregated (16 prefill + 48 decode) end to end.
func BenchmarkDisagg(b *testing.B) {
	cfg := traces.SynthConfig{Requests: 20000, Rate: 250, InputMean: 1024, OutputMean: 256,
		InputSigma: 0.6, OutputSigma: 0.6, Arrival: "poisson", PrefixGroups: 64, BlockSize: 16, Seed: 1}
	syn, err := traces.NewSynth(cfg)
	if err != nil {
		b.Fatal(err)
	}
	var rows []traces.Row
	for {
		row, err := syn.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		rows = append(rows, row)
	}
	for _, w := range []struct {
		name  string
		pools []PoolSpec
	}{
		{"4P+12D", []PoolSpec{{Name: "prefill", Role: RolePrefill, Instances: 4, GPU: "h100"}, {Name: "decode", Role: RoleDecode, Instances: 12, GPU: "h100"}}},
		{"16-both", []PoolSpec{{Name: "all", Role: RoleBoth, Instances: 16, GPU: "h100"}}},
	} {
		b.Run(w.name, func(b *testing.B) {
			spec := DefaultClusterSpec()
			spec.UsePools(w.pools)
			spec.Router = "least-request"
			for range b.N {
				cfg, err := spec.Build(metrics.SLO{})
				if err != nil {
					b.Fatal(err)
				}
				res, err := Run(cfg, &sliceReader{rows: rows})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(res.Steps), "steps")
			}
		})
	}
}
