package sim

import (
	"fmt"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/route"
	"servelab/sim/latency"
)

// ClusterSpec is a simulated cluster as a person writes it: names and specs rather than
// objects. Build turns it into a Config; experiments and the CLI share it.
type ClusterSpec struct {
	Instances int    `json:"instances"`
	Router    string `json:"router"`
	Batch     string `json:"batch"`
	Evict     string `json:"evict"`
	Model     string `json:"model"`
	GPU       string `json:"gpu"`
	TP        int    `json:"tp"`
	// Latency is "roofline" or "linear:FILE" / "profile:FILE".
	Latency string `json:"latency"`
	// BlockSize, NumGPUBlocksOverride, GPUMemoryUtilization, EnablePrefixCaching and
	// MaxModelLen mean what vLLM's flags of the same names mean.
	BlockSize            int     `json:"block_size"`
	NumGPUBlocksOverride int     `json:"num_gpu_blocks_override,omitempty"`
	GPUMemoryUtilization float64 `json:"gpu_memory_utilization"`
	EnablePrefixCaching  bool    `json:"enable_prefix_caching"`
	MaxModelLen          int     `json:"max_model_len,omitempty"`
	Seed                 uint64  `json:"seed"`
	// ScrapeInterval is Config.ScrapeInterval in seconds: how stale the router's gauges
	// are (0: read at every arrival).
	ScrapeInterval float64 `json:"scrape_interval_s,omitempty"`
}

// DefaultClusterSpec is one H100 serving Llama-3.1-8B with vLLM's defaults.
func DefaultClusterSpec() ClusterSpec {
	return ClusterSpec{
		Instances:            1,
		Router:               "round-robin",
		Batch:                "vllm",
		Evict:                "lru",
		Model:                "llama-3.1-8b",
		GPU:                  "h100",
		TP:                   1,
		Latency:              "roofline",
		BlockSize:            16,
		GPUMemoryUtilization: 0.9,
		EnablePrefixCaching:  true,
	}
}

// Build resolves the spec into a simulator configuration.
func (c ClusterSpec) Build(slo metrics.SLO) (Config, error) {
	if c.Instances <= 0 {
		return Config{}, fmt.Errorf("instances: must be positive, got %d", c.Instances)
	}
	if c.BlockSize <= 0 {
		return Config{}, fmt.Errorf("block_size: must be positive, got %d", c.BlockSize)
	}
	env := policies.Env{Seed: c.Seed, BlockSize: c.BlockSize, GPUClass: latency.GPUClass(c.GPU)}
	router, err := route.Parse(c.Router, env)
	if err != nil {
		return Config{}, fmt.Errorf("router: %w", err)
	}
	batchSpec, err := policies.ParseSpec(c.Batch)
	if err != nil {
		return Config{}, fmt.Errorf("batch: %w", err)
	}
	evictSpec, err := policies.ParseSpec(c.Evict)
	if err != nil {
		return Config{}, fmt.Errorf("evict: %w", err)
	}
	// Build once up front so a bad spec fails before the run starts.
	if _, err := batch.Registry.Build(batchSpec, env); err != nil {
		return Config{}, fmt.Errorf("batch: %w", err)
	}
	if _, err := evict.Registry.Build(evictSpec, env); err != nil {
		return Config{}, fmt.Errorf("evict: %w", err)
	}
	lat, err := latency.Parse(c.Latency, c.GPU, c.Model, c.TP)
	if err != nil {
		return Config{}, fmt.Errorf("latency: %w", err)
	}
	blocks := c.NumGPUBlocksOverride
	if blocks <= 0 {
		if blocks, err = latency.KVCacheBlocks(lat, c.BlockSize, c.GPUMemoryUtilization); err != nil {
			return Config{}, err
		}
	}
	maxLen := c.MaxModelLen
	if maxLen <= 0 {
		maxLen = latency.MaxModelLen(lat)
	}
	return Config{
		Instances: c.Instances,
		Router:    router,
		NewBatch: func(i int) (batch.Policy, error) {
			e := env
			e.Seed = env.Seed + uint64(i) + 1
			return batch.Registry.Build(batchSpec, e)
		},
		NewEvict: func(i int) (evict.Policy, error) {
			e := env
			e.Seed = env.Seed + uint64(i) + 1
			return evict.Registry.Build(evictSpec, e)
		},
		KVBlocks:       blocks,
		BlockSize:      c.BlockSize,
		PrefixCaching:  c.EnablePrefixCaching,
		MaxModelLen:    maxLen,
		Latency:        lat,
		SLO:            slo,
		ScrapeInterval: c.ScrapeInterval,
	}, nil
}
