package sim

import (
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
