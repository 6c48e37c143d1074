package serving

import (
	"strings"
	"testing"
)

func TestEngineConfigValidate(t *testing.T) {
	ok := EngineConfig{Batch: "vllm:max_num_seqs=256", Evict: "lru", BlockSize: 16, NumGPUBlocks: 64, MaxModelLen: 512}
	for _, tc := range []struct {
		name    string
		edit    func(*EngineConfig)
		wantErr string
	}{
		{"complete", func(*EngineConfig) {}, ""},
		{"no batch", func(c *EngineConfig) { c.Batch = "" }, `"batch"`},
		{"no evict", func(c *EngineConfig) { c.Evict = "" }, `"evict"`},
		{"no block size", func(c *EngineConfig) { c.BlockSize = 0 }, `"block_size"`},
		{"no blocks", func(c *EngineConfig) { c.NumGPUBlocks = -1 }, `"num_gpu_blocks"`},
		{"no context", func(c *EngineConfig) { c.MaxModelLen = 0 }, `"max_model_len"`},
		{"tiers", func(c *EngineConfig) {
			c.KVTiers = []KVTierConfig{{Medium: "cpu", Blocks: 8, Evict: "lru"}, {Medium: "disk", Blocks: 64, Evict: "s3fifo"}}
		}, ""},
		{"tier medium", func(c *EngineConfig) { c.KVTiers = []KVTierConfig{{Medium: "CPU", Blocks: 8, Evict: "lru"}} }, `"kv_tiers[0].medium"`},
		{"tier blocks", func(c *EngineConfig) {
			c.KVTiers = []KVTierConfig{{Medium: "cpu", Blocks: 8, Evict: "lru"}, {Medium: "disk", Evict: "lru"}}
		}, `"kv_tiers[1].blocks"`},
		{"tier evict", func(c *EngineConfig) { c.KVTiers = []KVTierConfig{{Medium: "disk", Blocks: 8}} }, `"kv_tiers[0].evict"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.wantErr)
			}
		})
	}
}
