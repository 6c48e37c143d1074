package sim

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
	"servelab/serving"
)

// cpuEngine is what a CPU engine started with default flags resolves to (no GPU class).
var cpuEngine = serving.EngineConfig{
	Batch:     "vllm:chunked_prefill=true,long_prefill_token_threshold=0,max_num_batched_tokens=2048,max_num_seqs=256",
	Evict:     "lru",
	BlockSize: 16, NumGPUBlocks: 400, MaxModelLen: 512, EnablePrefixCaching: true,
}

func TestUseEngineRunsExactlyTheEngine(t *testing.T) {
	// The default spec is an H100; the engine's configuration must win over its defaults.
	spec := DefaultClusterSpec()
	spec.Instances = 2
	spec.UseEngine(cpuEngine)
	cfg, err := spec.Build(metrics.SLO{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range spec.Instances {
		got, err := cfg.Resolved(i)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(cpuEngine, got); diff != "" {
			t.Errorf("instance %d (-engine +simulated):\n%s", i, diff)
		}
	}

	// Without it, the default spec's h100 gives vLLM's H100 limits: the bug of issue 11.
	spec = DefaultClusterSpec()
	spec.BlockSize, spec.NumGPUBlocksOverride, spec.MaxModelLen = 16, 400, 512
	cfg, err = spec.Build(metrics.SLO{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cfg.Resolved(0)
	if err != nil {
		t.Fatal(err)
	}
	if cmp.Equal(got, cpuEngine) {
		t.Errorf("the default spec resolves to the CPU engine's configuration %+v; the check above cannot fail", got)
	}
}

// TestUseEngineRunsTheEnginesKVTiers: an engine configuration with KV tiers (a real
// engine's /server_info, a profile) makes the simulator run those tiers, at the presets'
// load prices, and resolves back to it; one without tiers leaves the spec's kv_tiers.
func TestUseEngineRunsTheEnginesKVTiers(t *testing.T) {
	tiered := cpuEngine
	tiered.KVTiers = []serving.KVTierConfig{{Medium: "cpu", Blocks: 64, Evict: "lru"}, {Medium: "disk", Blocks: 256, Evict: "fifo"}}
	spec := DefaultClusterSpec()
	spec.Instances = 2
	spec.KVTiers = []KVTierSpec{{Medium: "cpu", Blocks: 8}} // replaced by the engine's
	spec.UseEngine(tiered)
	cfg, err := spec.Build(metrics.SLO{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range spec.Instances {
		got, err := cfg.Resolved(i)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tiered, got); diff != "" {
			t.Errorf("instance %d (-engine +simulated):\n%s", i, diff)
		}
	}
	if got, want := cfg.KVTiers[1].BandwidthBytesPerS, KVTierPresets["nvme"].BandwidthGBps*1e9; got != want {
		t.Errorf("disk tier bandwidth %g B/s, want nvme's preset %g", got, want)
	}

	spec = DefaultClusterSpec()
	spec.KVTiers = []KVTierSpec{{Medium: "cpu", Blocks: 8}}
	spec.UseEngine(cpuEngine)
	if cfg, err = spec.Build(metrics.SLO{}); err != nil {
		t.Fatal(err)
	}
	got, err := cfg.Resolved(0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]serving.KVTierConfig{{Medium: "cpu", Blocks: 8, Evict: "lru"}}, got.KVTiers); diff != "" {
		t.Errorf("an engine without tiers: the spec's kv_tiers (-want +got):\n%s", diff)
	}
}

func TestUseEngineRefusesConflictsAndUnresolvedSpecs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*ClusterSpec)
		wantErr string
	}{
		{"batch set besides", func(c *ClusterSpec) { c.Batch = "priority" }, "batch: set, but"},
		{"block size set besides", func(c *ClusterSpec) { c.BlockSize = 32 }, "block_size: set, but"},
		{"prefix caching set besides", func(c *ClusterSpec) { c.EnablePrefixCaching = true }, "enable_prefix_caching: set, but"},
		{"unresolved batch spec", func(c *ClusterSpec) { c.Engine.Batch = "vllm" }, "is not a resolved spec"},
		{"incomplete", func(c *ClusterSpec) { c.Engine.NumGPUBlocks = 0 }, `"num_gpu_blocks"`},
		{"kv_tiers set besides the engine's", func(c *ClusterSpec) {
			c.Engine.KVTiers = []serving.KVTierConfig{{Medium: "cpu", Blocks: 8, Evict: "lru"}}
			c.KVTiers = []KVTierSpec{{Medium: "cpu", Blocks: 16}}
		}, "kv_tiers: set, but"},
		{"unresolved tier evict spec", func(c *ClusterSpec) {
			c.Engine.KVTiers = []serving.KVTierConfig{{Medium: "disk", Blocks: 8, Evict: "s3fifo"}}
		}, "kv_tiers[0].evict"},
		{"engine tier unknown medium", func(c *ClusterSpec) {
			c.Engine.KVTiers = []serving.KVTierConfig{{Medium: "nvme", Blocks: 8, Evict: "lru"}}
		}, `"kv_tiers[0].medium"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := DefaultClusterSpec()
			spec.UseEngine(cpuEngine)
			tc.edit(&spec)
			_, err := spec.Build(metrics.SLO{})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Build() error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
