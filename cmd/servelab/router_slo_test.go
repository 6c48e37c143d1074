package main

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/experiments"
	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
)

// prefixSet is an exact prefix cache over a set of block hashes, as the views of both
// worlds expose one.
type prefixSet map[uint64]bool

func (c prefixSet) CachedPrefixBlocks(hashes []uint64) int {
	for i, h := range hashes {
		if !c[h] {
			return i
		}
	}
	return len(hashes)
}

// TestPredictedLatencyRoutesAlikeInBothWorlds routes one sequence of requests over one
// sequence of views with the SLO-aware scorer as the simulator builds it (servelab sim
// --latency profile:FILE, the experiment's slo as the default objective) and as servelab
// router builds it (--latency-profile FILE of the same engine, the default objective in the spec), and gets
// the same decisions. A router without the profile falls back to llm-d's composite score
// and decides otherwise, so the step-time model is what the two share.
func TestPredictedLatencyRoutesAlikeInBothWorlds(t *testing.T) {
	const prof = "../../sim/latency/testdata/profile.json"
	const spec = "weighted:predicted-latency=1,prefix=0,queue=0,kv=0"
	simSpec := sim.DefaultClusterSpec()
	simSpec.Instances, simSpec.Latency, simSpec.Router, simSpec.Seed = 4, "profile:"+prof, spec, 3
	cfg, err := simSpec.Build(metrics.SLO{TTFTMs: 400, TPOTMs: 40})
	if err != nil {
		t.Fatal(err)
	}
	// The router's profile is the simulator's, recording the engine the simulated instances
	// run (as `servelab profile` records the profiled engine's), whose step budget both
	// worlds' scorers pace the prefill queue by.
	resolved, err := cfg.Resolved(0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := latency.LoadProfile(prof)
	if err != nil {
		t.Fatal(err)
	}
	p.Engine = &resolved
	routerProf := filepath.Join(t.TempDir(), "profile.json")
	if err := p.Write(routerProf); err != nil {
		t.Fatal(err)
	}
	rf := routerFlags{spec: spec + ",ttft_slo_ms=400,tpot_slo_ms=40", blockSize: 16, seed: 3, latencyProfile: routerProf}
	rc, err := rf.config()
	if err != nil {
		t.Fatal(err)
	}
	noModel, err := route.Parse(spec+",ttft_slo_ms=400,tpot_slo_ms=40", policies.Env{Seed: 3, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	worlds := []route.Policy{cfg.Router, rc.Policy, noModel}

	rng := rand.New(rand.NewPCG(1, 2))
	caches := []prefixSet{{}, {}, {}, {}}
	decisions := make([][]int, len(worlds))
	for n := range 400 {
		// Prompts of 4 groups sharing 0-60 leading blocks, some with their own SLOs.
		group := uint64(rng.IntN(4))
		blocks := 8 + rng.IntN(120)
		hashes := make([]uint64, blocks)
		var parent uint64
		shared := rng.IntN(60)
		for i := range hashes {
			key := group<<32 | uint64(i)
			if i >= shared {
				key = 1<<63 | uint64(n)<<32 | uint64(i)
			}
			parent = serving.ChainHash(parent, key)
			hashes[i] = parent
		}
		req := serving.Request{ID: uint64(n), Arrival: float64(n) * 0.05, PromptTokens: 16 * blocks, MaxTokens: 1 + rng.IntN(400), BlockHashes: hashes}
		if n%3 == 0 {
			req.TTFTSLO, req.AvgTPOTSLO = 0.2+rng.Float64(), 0.02+0.05*rng.Float64()
		}
		views := make([]serving.InstanceView, 4)
		for i := range views {
			views[i] = serving.InstanceView{Index: i, Waiting: rng.IntN(12), Running: rng.IntN(64), KVUsage: rng.Float64(), Cache: caches[i]}
		}
		for w, p := range worlds {
			r := req
			decisions[w] = append(decisions[w], p.Route(&r, views))
		}
		for _, h := range hashes {
			caches[decisions[0][n]][h] = true
		}
	}
	if diff := cmp.Diff(decisions[0], decisions[1]); diff != "" {
		t.Errorf("simulator and router decide differently (-sim +router):\n%s", diff)
	}
	if cmp.Equal(decisions[0], decisions[2]) {
		t.Error("a router without the step-time model decides as the one with it: the model is not used")
	}
}

// TestRouterNeedsLatencyProfile: servelab router refuses a predicted-latency-scorer without
// --latency-profile, and names a bad profile file.
func TestRouterNeedsLatencyProfile(t *testing.T) {
	for _, tc := range []struct {
		flags routerFlags
		want  string
	}{
		{routerFlags{spec: "weighted:predicted-latency=1", blockSize: 16}, "--latency-profile"},
		{routerFlags{spec: "weighted:predicted-latency=1", blockSize: 16, latencyProfile: "testdata/missing.json"}, "missing.json"},
		{routerFlags{spec: "weighted:predicted-latency=1", blockSize: 16, latencyProfile: "../../sim/latency/testdata/profile.json", slo: "ttft:soon"}, "--slo"},
	} {
		if _, err := tc.flags.config(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one naming %s", tc.flags, err, tc.want)
		}
	}
	if _, err := (&routerFlags{spec: "weighted", blockSize: 16}).config(); err != nil {
		t.Errorf("a router without the scorer needs no profile: %v", err)
	}
}

// TestRealWorldCellsRouteOnTheExperimentsObjectives: a real cell's router gets the
// experiment's slo as its default objectives, as the simulator's scorer does.
func TestRealWorldCellsRouteOnTheExperimentsObjectives(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "e.yaml")
	yaml := "name: e\nworld: real\nworkload:\n  trace: t.jsonl\ncluster:\n  instances: 2\n  model: m\n" +
		"policies:\n  routers: [least-request]\nslo:\n  ttft_ms: 1500\n  tpot_ms: 80\n"
	for name, data := range map[string]string{"e.yaml": yaml, "m/config.json": "{}", "t.jsonl": `{"arrival_s":0,"input_tokens":8,"output_tokens":2}` + "\n"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s, err := experiments.Load(spec)
	if err != nil {
		t.Fatal(err)
	}
	var f routerFlags
	realWorldObjectives(&f, experiments.RealCell{Spec: s})
	if f.slo != "ttft:1500,tpot:80" {
		t.Errorf("router's --slo: %q, want the experiment's ttft:1500,tpot:80", f.slo)
	}
	// An experiment with a TTFT objective only gives the router that one, which it accepts.
	s.SLO.TPOTMs = 0
	realWorldObjectives(&f, experiments.RealCell{Spec: s})
	f.spec, f.blockSize = "least-request", 16
	if _, err := f.config(); f.slo != "ttft:1500" || err != nil {
		t.Errorf("router's --slo: %q (%v), want ttft:1500", f.slo, err)
	}
}
