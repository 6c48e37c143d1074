package report

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"servelab/experiments"
)

// A spec of several clusters reports each cluster's rows under its name, with the cost
// columns, each KV tier's hit rate where a cluster has tiers and the disaggregated share
// where one disaggregates; the answer names the policy with the most goodput per dollar.
func TestReportComparesClusters(t *testing.T) {
	trace, err := filepath.Abs("../../examples/traces/mooncake_conv_500.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	spec := `name: clusters
workload: {trace: ` + trace + `, max_requests: 120, token_scale: 0.25, rate_scale: 0.5}
clusters:
  - name: pd
    pools: [{name: p, role: prefill, instances: 1, gpu: a100-80g}, {name: d, role: decode, instances: 2, gpu: l4}]
  - name: tiered
    instances: 1
    gpu: a100-80g
    num_gpu_blocks_override: 300
    kv_tiers: [{medium: cpu, blocks: 2000}]
policies: {routers: [least-request]}
slo: {ttft_ms: 2000, tpot_ms: 100}
`
	dir := t.TempDir()
	s, err := experiments.Parse([]byte(spec), filepath.Join(dir, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	res, err := experiments.Run(context.Background(), s, experiments.Options{Out: out})
	if err != nil {
		t.Fatal(err)
	}
	e, err := Load(out)
	if err != nil {
		t.Fatal(err)
	}
	md := renderMarkdown(t, e)

	var header string
	rows := map[string]string{}
	for _, line := range strings.Split(md, "\n") {
		switch {
		case strings.HasPrefix(line, "| # | policy |") && header == "":
			header = line
		case strings.HasPrefix(line, "| 1 |"), strings.HasPrefix(line, "| 2 |"):
			for _, name := range []string{"pd", "tiered"} {
				if strings.Contains(line, "`"+name+" · least-request / lru`") {
					if _, ok := rows[name]; !ok {
						rows[name] = line
					}
				}
			}
		}
	}
	for _, col := range []string{"goodput req/s", "p99 TPOT ms", "prefix hit %", "GPU hit %", "CPU hit %", "disaggregated %", "goodput/$", "cost $"} {
		if !strings.Contains(header, "| "+col+" |") {
			t.Errorf("ranked table's header lacks %q: %s", col, header)
		}
	}
	if len(rows) != 2 {
		t.Fatalf("want a row per cluster, got %v in\n%s", rows, md)
	}
	cell := func(row, col string) string {
		heads, vals := strings.Split(header, " | "), strings.Split(row, " | ")
		for i, h := range heads {
			if h == col && i < len(vals) {
				return vals[i]
			}
		}
		return ""
	}
	for _, p := range res.Policies {
		row := rows[p.Cluster]
		for _, tier := range p.KVTiers {
			if got, want := cell(row, tier.Medium+" hit %"), FormatStat(tier.PrefixCacheHitRate, p.Seeds, 100); got != want {
				t.Errorf("%s: %s hit %% %q, want results.json's %q", p.Name(), tier.Medium, got, want)
			}
		}
		switch p.Cluster {
		case "tiered":
			if len(p.KVTiers) != 2 || p.KVTiers[1].Medium != "CPU" || p.KVTiers[1].PrefixCacheHitRate.Mean == 0 {
				t.Errorf("tiered: tiers %+v, want GPU and CPU, with CPU hits", p.KVTiers)
			}
			if got := cell(row, "disaggregated %"); got != "–" {
				t.Errorf("tiered: disaggregated %q, want –", got)
			}
		case "pd":
			if got, want := cell(row, "GPU hit %"), FormatStat(p.PrefixCacheHitRate, p.Seeds, 100); got != want {
				t.Errorf("pd: GPU hit %% %q, want its prefix hit rate %q (no tier below the GPU)", got, want)
			}
			if got := cell(row, "CPU hit %"); got != "–" {
				t.Errorf("pd: CPU hit %% %q, want – (no CPU tier)", got)
			}
			if got, want := cell(row, "disaggregated %"), FormatStat(*p.DisaggregatedShare, p.Seeds, 100); got != want || p.DisaggregatedShare.Mean == 0 {
				t.Errorf("pd: disaggregated %q, want results.json's %q, above 0", got, want)
			}
		}
	}
	if !strings.Contains(md, "goodput per dollar") {
		t.Errorf("the answer does not compare goodput per dollar:\n%s", md)
	}
	t.Log(md)
}
