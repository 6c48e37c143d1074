package sim

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/engine/kv"
	"servelab/metrics"
	"servelab/traces"
)

// kvAffineModel is affineModel that knows its KV bytes per token, as the roofline does.
type kvAffineModel struct {
	affineModel
	kvBytes float64
}

func (m kvAffineModel) KVBytesPerToken() float64 { return m.kvBytes }

// TestCPUTierHitChargesLoad: A's prompt (4 full blocks) is evicted from a 10-block GPU by
// B, then sent again as C. With a CPU tier, C finds its 4 blocks there and its TTFT is one
// step computing its last token plus the load, by hand: 10 us + 4 blocks x 16 tokens x
// 131072 B (Llama-3.1-8B's KV per token) / 50 GB/s. Without tiers C recomputes all.
func TestCPUTierHitChargesLoad(t *testing.T) {
	model := kvAffineModel{affineModel{perStep: 0.01, perToken: 1e-4, perContext: 1e-7}, 131072}
	rows := []traces.Row{
		{Arrival: 0, InputTokens: 65, OutputTokens: 1, HashIDs: []int64{1, 2, 3, 4, 5}, HashBlockSize: 16},
		{Arrival: 1, InputTokens: 145, OutputTokens: 1, HashIDs: []int64{11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, HashBlockSize: 16},
		{Arrival: 2, InputTokens: 65, OutputTokens: 1, HashIDs: []int64{1, 2, 3, 4, 5}, HashBlockSize: 16},
	}
	const bw, lat = 50e9, 10e-6
	load := lat + 4*16*131072/bw
	for _, tc := range []struct {
		name     string
		tiers    []KVTier
		wantTTFT float64
		wantSum  []metrics.KVTierSummary
	}{
		{
			name:     "no tiers",
			wantTTFT: model.perStep + 65*model.perToken + 65*model.perContext,
		},
		{
			name:     "cpu tier",
			tiers:    []KVTier{{Medium: kv.MediumCPU, Blocks: 20, BandwidthBytesPerS: bw, LatencyS: lat}},
			wantTTFT: model.perStep + 1*model.perToken + 65*model.perContext + load,
			wantSum: []metrics.KVTierSummary{
				{Medium: kv.MediumGPU},
				// A's 4 blocks go down when B comes, B's 4 cached ones when C loads A's back.
				{Medium: kv.MediumCPU, PrefixCacheHitRate: 64.0 / (65 + 145 + 65), HitBlocks: 4, OffloadedBlocks: 8, LoadedBlocks: 4, LoadSeconds: load},
			},
		},
		{
			// local-disk's form: each block its own read, 226 us apiece.
			name:     "a tier with a per-block latency",
			tiers:    []KVTier{{Medium: kv.MediumCPU, Blocks: 20, BandwidthBytesPerS: bw, LatencyS: lat, BlockLatencyS: 226e-6}},
			wantTTFT: model.perStep + 1*model.perToken + 65*model.perContext + load + 4*226e-6,
			wantSum: []metrics.KVTierSummary{
				{Medium: kv.MediumGPU},
				{Medium: kv.MediumCPU, PrefixCacheHitRate: 64.0 / (65 + 145 + 65), HitBlocks: 4, OffloadedBlocks: 8, LoadedBlocks: 4, LoadSeconds: load + 4*226e-6},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, 1, "round-robin", "vllm", 10)
			cfg.Latency = model
			cfg.KVTiers = tc.tiers
			res, recs := runCollect(t, cfg, rows, false)
			if len(recs) != 3 || recs[2].Arrival != 2 {
				t.Fatalf("records: %+v", recs)
			}
			c := recs[2]
			if got := c.FirstToken - c.Arrival; math.Abs(got-tc.wantTTFT) > 1e-12 {
				t.Errorf("C's TTFT %.9f s, want %.9f", got, tc.wantTTFT)
			}
			if diff := cmp.Diff(tc.wantSum, res.Summary.KVTiers, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
				t.Errorf("tier summary (-want +got):\n%s", diff)
			}
		})
	}
}

func TestKVTierSpec(t *testing.T) {
	base := func() ClusterSpec {
		c := DefaultClusterSpec()
		c.NumGPUBlocksOverride = 100
		return c
	}
	t.Run("presets and overrides", func(t *testing.T) {
		c := base()
		c.KVTiers = []KVTierSpec{{Medium: "cpu", Blocks: 1000}, {Medium: "disk", Blocks: 5000, Evict: "fifo", LatencyUs: 50}}
		cfg, err := c.Build(metrics.SLO{})
		if err != nil {
			t.Fatal(err)
		}
		got := []KVTier{cfg.KVTiers[0], cfg.KVTiers[1]}
		want := []KVTier{
			{Medium: kv.MediumCPU, Blocks: 1000, BandwidthBytesPerS: 50e9, LatencyS: 10e-6},
			{Medium: kv.MediumDisk, Blocks: 5000, BandwidthBytesPerS: 7e9, LatencyS: 50e-6},
		}
		if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(KVTier{}, "NewEvict"), cmpopts.EquateApprox(1e-12, 0)); diff != "" {
			t.Errorf("tiers (-want +got):\n%s", diff)
		}
		p, err := cfg.KVTiers[1].NewEvict(0)
		if err != nil || p.Spec().Name != "fifo" {
			t.Errorf("disk evictor %v, %v; want fifo", p, err)
		}
	})
	for _, tc := range []struct {
		name  string
		tiers []KVTierSpec
		want  string
	}{
		{"medium", []KVTierSpec{{Medium: "ssd", Blocks: 1}}, `kv_tiers[0].medium: unknown medium "ssd" (want cpu or disk)`},
		{"twice", []KVTierSpec{{Medium: "cpu", Blocks: 1}, {Medium: "cpu", Blocks: 1}}, `kv_tiers[1].medium: "cpu" appears twice`},
		{"blocks", []KVTierSpec{{Medium: "cpu"}}, `kv_tiers[0].blocks: must be positive, got 0`},
		{"preset", []KVTierSpec{{Medium: "cpu", Blocks: 1, Preset: "usb"}}, `kv_tiers[0].preset: unknown preset "usb" (want one of local-cpu, local-disk, nvme, pcie-gen4, pcie-gen5)`},
		{"evict", []KVTierSpec{{Medium: "cpu", Blocks: 1, Evict: "nope"}}, "kv_tiers[0].evict: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			c.KVTiers = tc.tiers
			_, err := c.Build(metrics.SLO{})
			if err == nil || len(err.Error()) < len(tc.want) || err.Error()[:len(tc.want)] != tc.want {
				t.Errorf("error %v, want one starting %q", err, tc.want)
			}
		})
	}
}

func TestParseKVTier(t *testing.T) {
	got, err := ParseKVTier("disk:5000:s3fifo:nvme")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(KVTierSpec{Medium: "disk", Blocks: 5000, Evict: "s3fifo", Preset: "nvme"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"cpu", "cpu:x", "cpu:1:lru:nvme:9"} {
		if _, err := ParseKVTier(bad); err == nil {
			t.Errorf("ParseKVTier(%q) accepted", bad)
		}
	}
}

// TestKVIndexKeepsMedium: the router's event-fed index remembers which tier holds a hash,
// following it from GPU to CPU and back, for the precise scorer's tier weights.
func TestKVIndexKeepsMedium(t *testing.T) {
	x := newKVIndex(4)
	for _, ev := range []kv.Event{
		{Kind: kv.BlockStored, Hashes: []uint64{1, 2, 3}, Medium: kv.MediumGPU},
		{Kind: kv.BlockRemoved, Hashes: []uint64{2}, Medium: kv.MediumGPU},
		{Kind: kv.BlockStored, Hashes: []uint64{2}, Medium: kv.MediumCPU},
		{Kind: kv.BlockRemoved, Hashes: []uint64{3}, Medium: kv.MediumGPU},
		{Kind: kv.BlockStored, Hashes: []uint64{3}, Medium: kv.MediumDisk},
	} {
		x.collect(ev)
	}
	x.publish(0, 0)
	x.catchUp(0)
	w := map[string]float64{kv.MediumGPU: 1, kv.MediumCPU: 10, kv.MediumDisk: 100}
	if got := x.CachedPrefixWeight([]uint64{1, 2, 3, 4}, func(m string) float64 { return w[m] }); got != 111 {
		t.Errorf("weight %v, want 111 (GPU + CPU + DISK)", got)
	}
}
