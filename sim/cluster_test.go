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
	if got == cpuEngine {
		t.Errorf("the default spec resolves to the CPU engine's configuration %+v; the check above cannot fail", got)
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
