package sim

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"servelab/engine/kv"
	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/evict"
	"servelab/serving"
)

// KVTier is a tier of each instance's KV cache below the accelerator (kv.TierConfig),
// with the cost of loading its blocks back.
type KVTier struct {
	// Medium is kv.MediumCPU or kv.MediumDisk.
	Medium string
	// Blocks is the tier's capacity per instance.
	Blocks int
	// NewEvict builds the tier's eviction policy for an instance; nil: LRU.
	NewEvict func(instance int) (evict.Policy, error)
	// BandwidthBytesPerS, LatencyS and BlockLatencyS price a load: a step that loads n
	// blocks from the tier takes LatencyS + n x (BlockLatencyS + KV bytes per block on one
	// GPU / BandwidthBytesPerS) longer.
	BandwidthBytesPerS, LatencyS, BlockLatencyS float64
}

// KVTierPreset is a link's default bandwidth and latency: nominal figures, not
// measurements, for a spec that names the hardware rather than its numbers.
type KVTierPreset struct {
	BandwidthGBps float64
	LatencyUs     float64
	Description   string
	// BlockLatencyUs is a cost per block loaded, where each block is its own read (0 for
	// the nominal presets, which price a load as one transfer).
	BlockLatencyUs float64
	// Measured marks a preset measured on a machine rather than taken from data sheets.
	Measured bool
}

// KVTierPresets are the defaults a kv_tiers entry's preset names. The local-* presets are
// this development machine's (a 2-core VM with a virtio disk), measured on the real
// engine's tiers, so `servelab fidelity` compares a CPU engine's tiers with the same costs.
// local-cpu: a block moves as one memory copy (engine/kvoffload's BenchmarkKVTierBlock,
// cpu/load: staging then the KV cache, what a hit costs): 118 us per 1.18 MB 110m block on
// the Intel Xeon VM (scripts/kv-tiers, 2026-12-04), 62 us on the AMD EPYC VM and 0.6 us per
// 8 KB tiny block (2026-12-05): 10 GB/s, the slower machine's, within 2x of either. (It was
// 3 GB/s, from the tiny model when a load decoded floats one by one.) local-disk from the tiny
// model (234 us per 8 KB block from the O_DIRECT disk tier, 558 loads: almost all of it the
// read's latency, so a per-block latency) and the 110m model (1.2-1.6 ms per 1.18 MB
// block, scripts/kv-tiers: the bandwidth, about 1 GB/s). On a loaded machine they vary 2x.
var KVTierPresets = map[string]KVTierPreset{
	"pcie-gen5":  {BandwidthGBps: 50, LatencyUs: 10, Description: "host memory over PCIe 5.0 x16: 64 GB/s nominal per direction, about 50 GB/s from pinned memory"},
	"pcie-gen4":  {BandwidthGBps: 25, LatencyUs: 10, Description: "host memory over PCIe 4.0 x16: 32 GB/s nominal per direction, about 25 GB/s from pinned memory"},
	"nvme":       {BandwidthGBps: 7, LatencyUs: 100, Description: "an NVMe SSD on PCIe 4.0: about 7 GB/s rated sequential read, 100 us to first byte"},
	"local-cpu":  {BandwidthGBps: 10, Measured: true, Description: "this machine's host-memory tier of the real engine: one copy a block, 62-118 us per 1.18 MB 110m block, 0.6 us per 8 KB tiny block"},
	"local-disk": {BandwidthGBps: 1, BlockLatencyUs: 226, Measured: true, Description: "this machine's disk tier of the real engine: one O_DIRECT read per block, 234 us per 8 KB tiny-model block, 1.2-1.6 ms per 1.18 MB 110m block"},
}

// kvTierDefaults is the preset a medium gets when its entry names none.
var kvTierDefaults = map[string]string{"cpu": "pcie-gen5", "disk": "nvme"}

// KVTierSpec is one entry of a cluster spec's kv_tiers, top tier first.
type KVTierSpec struct {
	// Medium is "cpu" or "disk".
	Medium string `json:"medium"`
	// Blocks is the tier's capacity per instance, in KV blocks of block_size tokens.
	Blocks int `json:"blocks"`
	// Evict is the tier's eviction policy spec (any registered evictor); empty: lru.
	Evict string `json:"evict,omitempty"`
	// Preset names the link's default figures (KVTierPresets); empty: pcie-gen5 for cpu,
	// nvme for disk. BandwidthGBps and LatencyUs, when set, override them.
	Preset        string  `json:"preset,omitempty"`
	BandwidthGBps float64 `json:"bandwidth_gbps,omitempty"`
	LatencyUs     float64 `json:"latency_us,omitempty"`
}

// ParseKVTier parses the CLI's MEDIUM:BLOCKS[:EVICT[:PRESET]] (--kv-tier cpu:100000:lru:pcie-gen5).
func ParseKVTier(s string) (KVTierSpec, error) {
	f := strings.Split(s, ":")
	if len(f) < 2 || len(f) > 4 {
		return KVTierSpec{}, fmt.Errorf("kv tier %q: want MEDIUM:BLOCKS[:EVICT[:PRESET]]", s)
	}
	t := KVTierSpec{Medium: f[0]}
	var err error
	if t.Blocks, err = strconv.Atoi(f[1]); err != nil {
		return KVTierSpec{}, fmt.Errorf("kv tier %q: blocks %q is not an integer", s, f[1])
	}
	if len(f) > 2 {
		t.Evict = f[2]
	}
	if len(f) > 3 {
		t.Preset = f[3]
	}
	return t, nil
}

// buildKVTiers resolves the spec's kv_tiers.
func buildKVTiers(specs []KVTierSpec, env func(int) policies.Env) ([]KVTier, error) {
	var out []KVTier
	seen := map[string]bool{}
	for i, t := range specs {
		key := fmt.Sprintf("kv_tiers[%d]", i)
		var medium string
		switch t.Medium {
		case "cpu":
			medium = kv.MediumCPU
		case "disk":
			medium = kv.MediumDisk
		default:
			return nil, fmt.Errorf("%s.medium: unknown medium %q (want cpu or disk)", key, t.Medium)
		}
		if seen[t.Medium] {
			return nil, fmt.Errorf("%s.medium: %q appears twice", key, t.Medium)
		}
		seen[t.Medium] = true
		if t.Blocks <= 0 {
			return nil, fmt.Errorf("%s.blocks: must be positive, got %d", key, t.Blocks)
		}
		name := t.Preset
		if name == "" {
			name = kvTierDefaults[t.Medium]
		}
		p, ok := KVTierPresets[name]
		if !ok {
			names := make([]string, 0, len(KVTierPresets))
			for n := range KVTierPresets {
				names = append(names, n)
			}
			sort.Strings(names)
			return nil, fmt.Errorf("%s.preset: unknown preset %q (want one of %s)", key, name, strings.Join(names, ", "))
		}
		for _, f := range []struct {
			key string
			v   float64
			to  *float64
		}{{"bandwidth_gbps", t.BandwidthGBps, &p.BandwidthGBps}, {"latency_us", t.LatencyUs, &p.LatencyUs}} {
			if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
				return nil, fmt.Errorf("%s.%s: must be a positive number, got %v", key, f.key, f.v)
			}
			if f.v > 0 {
				*f.to = f.v
			}
		}
		spec := policies.Spec{Name: "lru"}
		if t.Evict != "" {
			var err error
			if spec, err = policies.ParseSpec(t.Evict); err != nil {
				return nil, fmt.Errorf("%s.evict: %w", key, err)
			}
		}
		if _, err := evict.Registry.Build(spec, env(-1)); err != nil {
			return nil, fmt.Errorf("%s.evict: %w", key, err)
		}
		out = append(out, KVTier{
			Medium: medium, Blocks: t.Blocks,
			NewEvict:           func(i int) (evict.Policy, error) { return evict.Registry.Build(spec, env(i)) },
			BandwidthBytesPerS: p.BandwidthGBps * 1e9, LatencyS: p.LatencyUs * 1e-6, BlockLatencyS: p.BlockLatencyUs * 1e-6,
		})
	}
	return out, nil
}

// kvBytesPerToken is what a latency model that knows the model's shape (the roofline)
// says one token's KV takes on one GPU.
type kvBytesPerToken interface{ KVBytesPerToken() float64 }

// loadTime is the time instance in's step spends loading the blocks its allocations just
// took from lower tiers, loaded[t] from tier t, and takes the instance's load counters.
//
// The load is charged to the step, before its forward pass: the whole batch waits, as
// when a connector loads synchronously before the model runs (LMCache's start_load_kv).
// An asynchronous loader (vLLM's OffloadingConnector parks the request in
// WAITING_FOR_REMOTE_KVS) would delay only the request; charging the step is the
// conservative choice, and the one a request's TTFT shows either way. Each GPU of a
// tensor-parallel instance loads its own share of the KV over its own link, so the bytes
// are one GPU's (the roofline's KV bytes per token).
func (s *simulation) loadTime(in *instance) float64 {
	st := in.core.KV().TierStats()
	d := 0.0
	for t := range s.cfg.KVTiers {
		n := st[1+t].Loaded - in.loaded[t]
		if n == 0 {
			continue
		}
		in.loaded[t] = st[1+t].Loaded
		tier := &s.cfg.KVTiers[t]
		cost := tier.LatencyS + float64(n)*(tier.BlockLatencyS+in.blockBytes/tier.BandwidthBytesPerS)
		in.loadSecs[t] += cost
		d += cost
	}
	return d
}

// tierSummary reports each tier's share of prompt tokens found and its block traffic.
func (s *simulation) tierSummary(queries int64) []metrics.KVTierSummary {
	if len(s.cfg.KVTiers) == 0 {
		return nil
	}
	out := make([]metrics.KVTierSummary, 1+len(s.cfg.KVTiers))
	for i := range s.instances {
		for t, st := range s.instances[i].core.KV().TierStats() {
			o := &out[t]
			o.Medium = st.Medium
			o.HitBlocks += st.HitBlocks
			o.OffloadedBlocks += st.Offloaded
			o.LoadedBlocks += st.Loaded
			if t > 0 {
				o.LoadSeconds += s.instances[i].loadSecs[t-1]
			}
		}
	}
	for t := range out {
		if queries > 0 {
			out[t].PrefixCacheHitRate = float64(out[t].HitBlocks*int64(s.cfg.BlockSize)) / float64(queries)
		}
	}
	return out
}

// ResolveKVTiers checks and resolves kv_tiers entries as the simulator does (mediums,
// capacities, evictors, presets): the real engine's --kv-tier goes through it too, so the
// two worlds accept the same tiers.
func ResolveKVTiers(specs []KVTierSpec, env func(instance int) policies.Env) ([]KVTier, error) {
	return buildKVTiers(specs, env)
}

// ResolvedKVTiers is how an instance (instance i) reports resolved tiers in its
// serving.EngineConfig (GET /server_info): medium in lower case, capacity, and the tier's
// eviction policy spec as built (lru for a tier without one). The engine, the simulator and
// fidelity's check of the engines all report tiers through it.
func ResolvedKVTiers(tiers []KVTier, instance int) ([]serving.KVTierConfig, error) {
	var out []serving.KVTierConfig
	for _, t := range tiers {
		evictSpec := "lru" // the block manager's policy for a tier without one
		if t.NewEvict != nil {
			ep, err := t.NewEvict(instance)
			if err != nil {
				return nil, fmt.Errorf("kv tier %s: %w", t.Medium, err)
			}
			evictSpec = ep.Spec().String()
		}
		out = append(out, serving.KVTierConfig{Medium: strings.ToLower(t.Medium), Blocks: t.Blocks, Evict: evictSpec})
	}
	return out, nil
}
