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
	return nil
}
