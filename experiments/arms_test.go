package experiments

import (
	"context"
	"math"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies/route"
	"servelab/serving"
)

// A cluster with ab_router and ab_fraction splits each cell's requests between the cell's
// router (arm a) and ab_router (arm b) as servelab router does (route.Split of the cell's
// seed and the trace row index), and the results carry both arms side by side, each named
// by its router; a cluster without the keys has no arms, and ab_fraction 1 puts every
// request in arm b.
func TestABClusterSplitsAndReportsArms(t *testing.T) {
	const n = 200
	s, err := Parse([]byte("name: ab\nworkload: {trace: "+trace+", max_requests: 200, rate_scale: 4}\n"+
		"clusters:\n"+
		"  - {name: plain, instances: 2, model: llama-3.1-8b, gpu: a100-80g}\n"+
		"  - {name: ab30, instances: 2, model: llama-3.1-8b, gpu: a100-80g, ab_router: least-request, ab_fraction: 0.3}\n"+
		"  - {name: allb, instances: 2, model: llama-3.1-8b, gpu: a100-80g, ab_router: least-request, ab_fraction: 1}\n"+
		"policies: {routers: [round-robin]}\nseeds: [1, 2]\nslo: {ttft_ms: 500, tpot_ms: 50}\n"), filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), s, Options{Out: t.TempDir(), Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	// The arm each row falls in, by seed, as the real router splits x-request-id 0..n-1.
	inB := map[uint64]int{}
	for _, seed := range s.Seeds {
		split := route.Split{Fraction: 0.3, Seed: seed}
		for id := range uint64(n) {
			if split.Arm(id) == serving.ArmB {
				inB[seed]++
			}
		}
	}
	for _, c := range res.Cells {
		arms := c.Summary.Arms
		switch c.Cluster {
		case "plain":
			if arms != nil {
				t.Errorf("%s: arms %v without ab_router", c.ID, arms)
			}
		case "ab30":
			if arms[serving.ArmA] == nil || arms[serving.ArmB] == nil {
				t.Fatalf("%s: arms %v, want a and b", c.ID, arms)
			}
			a, b := arms[serving.ArmA], arms[serving.ArmB]
			if got := b.Completed + b.Failed; got != inB[c.Seed] {
				t.Errorf("%s: arm b has %d requests, route.Split puts %d of rows 0..%d there", c.ID, got, inB[c.Seed], n-1)
			}
			if got := a.Completed + a.Failed + b.Completed + b.Failed; got != n {
				t.Errorf("%s: the arms have %d requests, the cell %d", c.ID, got, n)
			}
			if d := a.RequestGoodput + b.RequestGoodput - c.Summary.RequestGoodput; math.Abs(d) > 1e-9 {
				t.Errorf("%s: the arms' goodputs %v + %v do not add up to the cell's %v", c.ID, a.RequestGoodput, b.RequestGoodput, c.Summary.RequestGoodput)
			}
		case "allb":
			if len(arms) != 1 || arms[serving.ArmB] == nil || arms[serving.ArmB].Completed+arms[serving.ArmB].Failed != n {
				t.Errorf("%s: arms %v, want all %d requests in arm b", c.ID, arms, n)
			}
		}
	}
	type arm struct {
		Name, Router string
		Requests     float64
	}
	got := map[string][]arm{}
	for _, p := range res.Policies {
		for _, a := range p.Arms {
			got[p.Cluster] = append(got[p.Cluster], arm{a.Name, a.Router, a.Requests.Mean})
		}
	}
	meanB := float64(inB[1]+inB[2]) / 2
	want := map[string][]arm{
		"ab30": {{"a", "round-robin", n - meanB}, {"b", "least-request", meanB}},
		"allb": {{"b", "least-request", n}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the policies' arms (-want +got):\n%s", diff)
	}
}
