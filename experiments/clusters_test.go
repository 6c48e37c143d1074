package experiments

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/sim"
)

// clustersSpec runs one router on three clusters: a disaggregated one, the same GPUs
// without disaggregation and a homogeneous one.
const clustersSpec = `name: t
workload: {trace: ../../examples/traces/mooncake_conv_500.jsonl, max_requests: 40, token_scale: 0.125}
clusters:
  - name: pd
    pools: [{name: p, role: prefill, instances: 1, gpu: a100-80g}, {name: d, role: decode, instances: 2, gpu: l4}]
    kv_link: tcp
  - name: same-gpus
    pools: [{name: p, instances: 1, gpu: a100-80g}, {name: d, instances: 2, gpu: l4}]
  - {name: h100, instances: 1, gpu: h100}
policies: {routers: [least-request]}
seeds: [1, 2]
`

// Each entry of clusters gets its own cells, run on that cluster, and its own rows in the
// results; the spec as run keeps every cluster as resolved.
func TestClustersRunEachCluster(t *testing.T) {
	s, err := Parse([]byte(clustersSpec), filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range s.Cells() {
		ids = append(ids, c.Cluster+" "+c.ID)
	}
	want := []string{
		"pd pd__least-request__vllm__lru__s1", "pd pd__least-request__vllm__lru__s2",
		"same-gpus same-gpus__least-request__vllm__lru__s1", "same-gpus same-gpus__least-request__vllm__lru__s2",
		"h100 h100__least-request__vllm__lru__s1", "h100 h100__least-request__vllm__lru__s2",
	}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Fatalf("cells (-want +got):\n%s", diff)
	}
	if got := s.Instances(); got != 3 {
		t.Errorf("Instances() = %d, want the largest cluster's 3", got)
	}

	res, err := Run(context.Background(), s, Options{Out: t.TempDir(), Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		Cluster      string
		Instances    int
		Disagg, Cost bool
		GPUHours     float64
	}
	var got []row
	for _, c := range res.Cells {
		if c.Status != "done" {
			t.Fatalf("cell %s: %s %s", c.ID, c.Status, c.Error)
		}
		if c.Seed == 1 {
			got = append(got, row{c.Cluster, len(c.InstanceRequests), c.Summary.Disaggregation != nil, c.Summary.Cost != nil,
				c.Summary.Cost.GPUHours / c.Summary.Duration * 3600})
		}
	}
	wantRows := []row{{"pd", 3, true, true, 3}, {"same-gpus", 3, false, true, 3}, {"h100", 1, false, true, 1}}
	if diff := cmp.Diff(wantRows, got, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("cells per cluster (-want +got):\n%s", diff)
	}
	var names []string
	for _, p := range res.Policies {
		names = append(names, p.Name())
		if p.Seeds != 2 {
			t.Errorf("%s: %d seeds, want 2", p.Name(), p.Seeds)
		}
		if (p.DisaggregatedShare != nil) != (p.Cluster == "pd") {
			t.Errorf("%s: disaggregated share %v, want one for pd alone", p.Name(), p.DisaggregatedShare)
		}
	}
	if len(names) != 3 {
		t.Errorf("policies %v, want one per cluster", names)
	}

	norm, err := s.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(norm, filepath.Join(t.TempDir(), "spec.yaml"))
	if err != nil {
		t.Fatalf("the normalized spec does not parse: %v\n%s", err, norm)
	}
	if len(again.Clusters) != 3 || again.Clusters[2].Instances != 1 || again.Clusters[2].GPU != "h100" ||
		again.Clusters[0].KVLink != "tcp" || len(again.Clusters[1].Pools) != 2 || again.Clusters[1].Pools[0].Role != sim.RoleBoth {
		t.Errorf("normalized clusters lost their settings:\n%s", norm)
	}
	twice, err := again.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(norm), string(twice)); diff != "" {
		t.Errorf("normalizing the normalized spec changes it (-once +twice):\n%s", diff)
	}
}

// output_token_scale scales the outputs apart from the prompts, which token_scale then
// scales alone.
func TestOutputTokenScale(t *testing.T) {
	totals := func(scales string) (in, out int64) {
		t.Helper()
		spec := "name: t\nworkload: {trace: ../../examples/traces/mooncake_conv_500.jsonl, max_requests: 30" + scales + "}\n" +
			"cluster: {instances: 2, gpu: h100}\npolicies: {routers: [least-request]}\n"
		s, err := Parse([]byte(spec), filepath.Join("testdata", "spec.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		res, err := Run(context.Background(), s, Options{Out: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		sum := res.Cells[0].Summary
		return sum.TotalInputTokens, sum.TotalOutputTokens
	}
	in1, out1 := totals("")
	in2, out2 := totals(", token_scale: 0.25")
	in3, out3 := totals(", token_scale: 0.25, output_token_scale: 1")
	in4, out4 := totals(", output_token_scale: 0.5")
	if out3 != out1 || in3 != in2 {
		t.Errorf("token_scale 0.25, output_token_scale 1: %d prompt and %d output tokens, want token_scale 0.25's prompts (%d) and the trace's outputs (%d)", in3, out3, in2, out1)
	}
	if in4 != in1 || !(out4 < out1*6/10 && out4 > out1*4/10) {
		t.Errorf("output_token_scale 0.5: %d prompt and %d output tokens, want the trace's prompts (%d) and about half its outputs (%d)", in4, out4, in1, out1)
	}
	if !(out2 < out1*3/10) {
		t.Errorf("token_scale 0.25 alone: %d output tokens, want about a quarter of %d", out2, out1)
	}
}
