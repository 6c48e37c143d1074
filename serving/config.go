package serving

import (
	"errors"
	"fmt"
)

// EngineConfig is an engine's fully resolved scheduling configuration: everything that
// decides which steps it runs, with no default left to fill in. The real engine reports
// it (GET /server_info, the labels of vllm:cache_config_info), a profile records it, and
// the simulator of that engine is built from it, so the two worlds schedule alike.
type EngineConfig struct {
	// Batch and Evict are the resolved policy specs, every parameter at the value the
	// policy runs with, in compact form ("vllm:chunked_prefill=true,...", the
	// policies.Spec.String of the policy's Spec()).
	Batch string `json:"batch"`
	Evict string `json:"evict"`
	// BlockSize, NumGPUBlocks, MaxModelLen and EnablePrefixCaching mean what vLLM's
	// cache_config.block_size, cache_config.num_gpu_blocks, model_config.max_model_len and
	// cache_config.enable_prefix_caching mean.
	BlockSize           int  `json:"block_size"`
	NumGPUBlocks        int  `json:"num_gpu_blocks"`
	MaxModelLen         int  `json:"max_model_len"`
	EnablePrefixCaching bool `json:"enable_prefix_caching"`
	// KVTiers are the KV cache's tiers below the accelerator's blocks, top down (cpu, then
	// disk), as servelab engine --kv-tier and the simulator's kv_tiers make them; none
	// without KV offloading (and left out of the JSON, as before tiers existed).
	KVTiers []KVTierConfig `json:"kv_tiers,omitempty"`
}

// KVTierConfig is one KV-cache tier in an EngineConfig, named as the simulator's cluster
// spec names it (sim.KVTierSpec) less the load prices, which a real engine measures.
type KVTierConfig struct {
	// Medium is "cpu" or "disk" (the lowercase of its KV events' medium, as llm-d reads it).
	Medium string `json:"medium"`
	// Blocks is the tier's capacity in KV blocks of block_size tokens.
	Blocks int `json:"blocks"`
	// Evict is the tier's resolved eviction policy spec.
	Evict string `json:"evict"`
}

// Validate reports a missing or impossible field; errors name the JSON key.
func (c EngineConfig) Validate() error {
	switch {
	case c.Batch == "":
		return errors.New(`field "batch": missing`)
	case c.Evict == "":
		return errors.New(`field "evict": missing`)
	case c.BlockSize <= 0:
		return fmt.Errorf(`field "block_size": must be positive, got %d`, c.BlockSize)
	case c.NumGPUBlocks <= 0:
		return fmt.Errorf(`field "num_gpu_blocks": must be positive, got %d`, c.NumGPUBlocks)
	case c.MaxModelLen <= 0:
		return fmt.Errorf(`field "max_model_len": must be positive, got %d`, c.MaxModelLen)
	}
	for i, t := range c.KVTiers {
		switch {
		case t.Medium != "cpu" && t.Medium != "disk":
			return fmt.Errorf(`field "kv_tiers[%d].medium": want cpu or disk, got %q`, i, t.Medium)
		case t.Blocks <= 0:
			return fmt.Errorf(`field "kv_tiers[%d].blocks": must be positive, got %d`, i, t.Blocks)
		case t.Evict == "":
			return fmt.Errorf(`field "kv_tiers[%d].evict": missing`, i)
		}
	}
	return nil
}
