package sim

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
	"servelab/traces"
)

// pdConfig is one prefill instance (0) and one decode instance (1) on the affine model,
// with a 1 GB/s, 100 us link and 1000 bytes of KV per token.
func pdConfig(t *testing.T, threshold int) Config {
	t.Helper()
	cfg := testConfig(t, 2, "round-robin", "vllm", 100)
	pre, _, err := route.Registry.Parse("round-robin", policies.Env{Seed: 3, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Pools = []Pool{
		{Name: "p", Role: RolePrefill, Instances: 1, Latency: cfg.Latency, KVBlocks: 100},
		{Name: "d", Role: RoleDecode, Instances: 1, Latency: cfg.Latency, KVBlocks: 100},
	}
	cfg.Disagg = &Disagg{
		PrefillRouter:   pre,
		Decider:         route.PrefixBasedPDDecider{NonCachedTokens: threshold},
		Link:            Link{Name: "test", BandwidthGBps: 1, LatencyUs: 100},
		KVBytesPerToken: 1000,
	}
	return cfg
}

// runPD runs rows and returns the result, the records and the simulation (to inspect the
// instances' block accounting afterwards).
func runPD(t *testing.T, cfg Config, rows []traces.Row) (Result, []serving.Record, *simulation) {
	t.Helper()
	var recs []serving.Record
	cfg.OnRecord = func(r *serving.Record) error {
		recs = append(recs, *r)
		return nil
	}
	s, err := newSimulation(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.run(&sliceReader{rows: rows})
	if err != nil {
		t.Fatal(err)
	}
	return res, recs, s
}

func checkNoLeak(t *testing.T, s *simulation) {
	t.Helper()
	for i := range s.instances {
		kv := s.instances[i].core.KV()
		if kv.NumFree() != kv.NumBlocks() {
			t.Errorf("instance %d: %d of %d blocks free at the end", i, kv.NumFree(), kv.NumBlocks())
		}
	}
	if n := len(s.pd.inflight); n != 0 {
		t.Errorf("%d disaggregated requests still in flight", n)
	}
}

func TestDisaggTimelineByHand(t *testing.T) {
	cfg := pdConfig(t, 16)
	m := cfg.Latency.(affineModel)
	rows := []traces.Row{{Arrival: 2, InputTokens: 100, OutputTokens: 3}}
	res, recs, s := runPD(t, cfg, rows)
	// Prefill on instance 0: 100 tokens (its one output token is never seen).
	prefill := m.perStep + 100*m.perToken + 100*m.perContext
	// 7 blocks of 16 tokens x 1000 bytes over 1 GB/s, plus 100 us.
	xfer := 100e-6 + 7*16*1000/1e9
	// The decode instance recomputes the last prompt token (context 100) and emits token 1,
	// then decodes tokens 2 and 3.
	d1 := m.perStep + m.perToken + 100*m.perContext
	d2 := m.perStep + m.perToken + 101*m.perContext
	d3 := m.perStep + m.perToken + 102*m.perContext
	zero := 0
	want := serving.Record{
		ID: 0, Instance: 1, Arrival: 2, Scheduled: 2,
		FirstToken: 2 + prefill + xfer + d1, Finish: 2 + prefill + xfer + d1 + d2 + d3,
		PromptTokens: 100, OutputTokens: 3, PrefillInstance: &zero, KVTransfer: xfer,
	}
	if diff := cmp.Diff([]serving.Record{want}, recs, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	wantTTFT := (prefill + xfer + d1) * 1000
	if got := res.Summary.MeanTTFTMs; got < wantTTFT-1e-9 || got > wantTTFT+1e-9 {
		t.Errorf("mean TTFT %v ms, want %v", got, wantTTFT)
	}
	if diff := cmp.Diff(&metrics.Disaggregation{Requests: 1, MeanKVTransfer: xfer, Link: "test"}, res.Summary.Disaggregation, cmpopts.EquateApprox(0, 1e-15)); diff != "" {
		t.Errorf("disaggregation summary (-want +got):\n%s", diff)
	}
	checkNoLeak(t, s)
}

func TestDisaggThreshold(t *testing.T) {
	ids := func(n int) []int64 {
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(i + 1)
		}
		return out
	}
	row := func(at float64, prompt int, hashIDs []int64) traces.Row {
		return traces.Row{Arrival: at, InputTokens: prompt, OutputTokens: 2, HashIDs: hashIDs, HashBlockSize: 16}
	}
	for _, tc := range []struct {
		name string
		rows []traces.Row
		// wantPrefill is, per request, whether it ran its prefill on instance 0.
		wantPrefill []bool
	}{
		{"short uncached prompt stays on decode", []traces.Row{row(0, 10, nil)}, []bool{false}},
		{"prompt at threshold disaggregates", []traces.Row{row(0, 16, ids(1))}, []bool{true}},
		{"long prompt disaggregates", []traces.Row{row(0, 500, ids(32))}, []bool{true}},
		// The first leaves its 6 prompt blocks cached on the decode instance; the second,
		// the same prompt later, has nothing uncached there.
		{"fully cached prompt stays", []traces.Row{row(0, 96, ids(6)), row(5, 96, ids(6))}, []bool{true, false}},
		// 96 cached, 10 more uncached: under 16.
		{"short uncached suffix stays", []traces.Row{row(0, 96, ids(6)), row(5, 106, ids(7))}, []bool{true, false}},
		// 96 cached, 32 more uncached.
		{"long uncached suffix disaggregates", []traces.Row{row(0, 96, ids(6)), row(5, 128, ids(8))}, []bool{true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, recs, s := runPD(t, pdConfig(t, 16), tc.rows)
			if len(recs) != len(tc.rows) {
				t.Fatalf("%d records, want %d", len(recs), len(tc.rows))
			}
			var n int64
			for i, r := range recs {
				if r.Instance != 1 {
					t.Errorf("request %d finished on instance %d, want the decode instance 1", i, r.Instance)
				}
				if got := r.PrefillInstance != nil; got != tc.wantPrefill[i] {
					t.Errorf("request %d (prompt %d): disaggregated %v, want %v", i, r.PromptTokens, got, tc.wantPrefill[i])
				}
				if tc.wantPrefill[i] {
					n++
				}
			}
			if got := res.Summary.Disaggregation.Requests; got != n {
				t.Errorf("summary counts %d disaggregated requests, want %d", got, n)
			}
			checkNoLeak(t, s)
		})
	}
}

func disaggSpec() ClusterSpec {
	c := poolsSpec()
	c.UsePools([]PoolSpec{
		{Name: "prefill", Role: RolePrefill, Instances: 1, GPU: "a100-80g"},
		{Name: "decode", Role: RoleDecode, Instances: 2, GPU: "l4"},
	})
	return c
}

func TestDisaggDeterministicAndLeakFree(t *testing.T) {
	rows := randomRows(300, 11)
	run := func() ([]byte, Result, *simulation) {
		cfg, err := disaggSpec().Build(metrics.SLO{TTFTMs: 500})
		if err != nil {
			t.Fatal(err)
		}
		res, _, s := runPD(t, cfg, rows)
		b, err := json.Marshal(res.Summary)
		if err != nil {
			t.Fatal(err)
		}
		return b, res, s
	}
	a, res, s := run()
	b, _, _ := run()
	if string(a) != string(b) {
		t.Errorf("two runs with the same seed differ:\n%s\n%s", a, b)
	}
	checkNoLeak(t, s)
	d := res.Summary.Disaggregation
	if d == nil || d.Requests == 0 || d.Requests == int64(len(rows)) || d.Link != DefaultLink || !(d.MeanKVTransfer > 0) {
		t.Errorf("disaggregation summary %+v: want some but not all of %d requests disaggregated over %s", d, len(rows), DefaultLink)
	}
	if res.Summary.Completed != len(rows) {
		t.Errorf("%d of %d requests completed", res.Summary.Completed, len(rows))
	}
}

// Decode instances run ahead up to the next prefill step end or transfer landing; that
// must give exactly the plain discrete-event schedule, every step through the queue.
func TestDisaggRunAheadMatchesEventQueue(t *testing.T) {
	rows := randomRows(400, 5)
	for _, link := range []string{"nvlink", "tcp"} {
		t.Run(link, func(t *testing.T) {
			spec := disaggSpec()
			spec.KVLink = link
			spec.Router = "weighted:prefix=3,queue=2,kv=2"
			checkRunAhead(t, func() Config {
				cfg, err := spec.Build(metrics.SLO{TTFTMs: 500})
				if err != nil {
					t.Fatal(err)
				}
				return cfg
			}, rows, 1e-9)
		})
	}
}

// The prefill instance holding a request's prompt KV for its transfer is not a prefix hit:
// with KV tiers, the tiers' hit rates add up to the total (the GPU's came out above 100%
// when holding counted as hits).
func TestDisaggHoldingIsNotAHit(t *testing.T) {
	spec := disaggSpec()
	spec.KVTiers = []KVTierSpec{{Medium: "cpu", Blocks: 4000}}
	spec.NumGPUBlocksOverride = 600
	cfg, err := spec.Build(metrics.SLO{})
	if err != nil {
		t.Fatal(err)
	}
	res, _, s := runPD(t, cfg, randomRows(300, 3))
	checkNoLeak(t, s)
	sum := 0.0
	for _, tier := range res.Summary.KVTiers {
		if tier.PrefixCacheHitRate < 0 || tier.PrefixCacheHitRate > 1 {
			t.Errorf("tier %s hit rate %g, outside [0, 1]", tier.Medium, tier.PrefixCacheHitRate)
		}
		sum += tier.PrefixCacheHitRate
	}
	if total := res.Summary.PrefixCacheHitRate; total <= 0 || math.Abs(sum-total) > 1e-9 {
		t.Errorf("the tiers' hit rates add up to %g, the total is %g", sum, total)
	}
}
