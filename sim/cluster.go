package sim

import (
	"fmt"
	"math"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/route"
	"servelab/serving"
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
	// are (0: read at every arrival). DefaultClusterSpec's is the real router's,
	// serving.DefaultScrapeInterval (50 ms).
	ScrapeInterval float64 `json:"scrape_interval_s"`
	// KVEventDelay is Config.KVEventDelay in seconds: how long after the end of the step
	// that cached (or evicted) a block the router's prefix index learns of it (0: the
	// router reads every instance's live cache). DefaultClusterSpec's is the real
	// router's as measured, serving.DefaultKVEventDelay.
	KVEventDelay float64 `json:"kv_event_delay_s"`
	// Engine, when set, is a real engine's resolved configuration (what it reports on GET
	// /server_info and a profile records) and every instance runs exactly it: its batch
	// and evict specs, block size, KV blocks, max model len and prefix caching. Batch,
	// Evict, BlockSize, NumGPUBlocksOverride, MaxModelLen and EnablePrefixCaching must then
	// be left zero (UseEngine does that), and no default, of the GPU class or otherwise,
	// fills in anything.
	Engine *serving.EngineConfig `json:"engine,omitempty"`
}

// UseEngine makes every instance run the engine configuration ec, clearing the fields it
// replaces.
func (c *ClusterSpec) UseEngine(ec serving.EngineConfig) {
	c.Engine = &ec
	c.Batch, c.Evict, c.BlockSize, c.NumGPUBlocksOverride, c.MaxModelLen, c.EnablePrefixCaching = "", "", 0, 0, 0, false
}

// withEngine returns the spec with Engine's values in the fields it replaces, after
// checking that none of them was set besides.
func (c ClusterSpec) withEngine() (ClusterSpec, error) {
	ec := c.Engine
	if ec == nil {
		return c, nil
	}
	if err := ec.Validate(); err != nil {
		return c, fmt.Errorf("engine: %w", err)
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"batch", c.Batch != ""}, {"evict", c.Evict != ""}, {"block_size", c.BlockSize != 0},
		{"num_gpu_blocks_override", c.NumGPUBlocksOverride != 0}, {"max_model_len", c.MaxModelLen != 0},
		{"enable_prefix_caching", c.EnablePrefixCaching},
	} {
		if f.set {
			return c, fmt.Errorf("%s: set, but the engine configuration (\"engine\") decides it; leave it out", f.name)
		}
	}
	c.Batch, c.Evict, c.BlockSize, c.NumGPUBlocksOverride = ec.Batch, ec.Evict, ec.BlockSize, ec.NumGPUBlocks
	c.MaxModelLen, c.EnablePrefixCaching = ec.MaxModelLen, ec.EnablePrefixCaching
	return c, nil
}

// DefaultClusterSpec is one H100 serving Llama-3.1-8B with vLLM's defaults, behind a
// router that sees the instances as the real router does: gauges scraped every 50 ms and
// prefix caches through KV events (serving.DefaultScrapeInterval, DefaultKVEventDelay).
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
		ScrapeInterval:       serving.DefaultScrapeInterval.Seconds(),
		KVEventDelay:         serving.DefaultKVEventDelay.Seconds(),
	}
}

// Build resolves the spec into a simulator configuration.
func (c ClusterSpec) Build(slo metrics.SLO) (Config, error) {
	c, err := c.withEngine()
	if err != nil {
		return Config{}, err
	}
	if c.Instances <= 0 {
		return Config{}, fmt.Errorf("instances: must be positive, got %d", c.Instances)
	}
	if c.BlockSize <= 0 {
		return Config{}, fmt.Errorf("block_size: must be positive, got %d", c.BlockSize)
	}
	for _, f := range []struct {
		key string
		v   float64
	}{{"scrape_interval_s", c.ScrapeInterval}, {"kv_event_delay_s", c.KVEventDelay}} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return Config{}, fmt.Errorf("%s: must be 0 or a positive number of seconds, got %v", f.key, f.v)
		}
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
	bp, err := batch.Registry.Build(batchSpec, env)
	if err != nil {
		return Config{}, fmt.Errorf("batch: %w", err)
	}
	ep, err := evict.Registry.Build(evictSpec, env)
	if err != nil {
		return Config{}, fmt.Errorf("evict: %w", err)
	}
	if c.Engine != nil {
		// The engine's specs are resolved: they must build to themselves, whatever the GPU.
		if got := bp.Spec().String(); got != c.Engine.Batch {
			return Config{}, fmt.Errorf("engine: batch %q is not a resolved spec (it builds %q)", c.Engine.Batch, got)
		}
		if got := ep.Spec().String(); got != c.Engine.Evict {
			return Config{}, fmt.Errorf("engine: evict %q is not a resolved spec (it builds %q)", c.Engine.Evict, got)
		}
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
		KVEventDelay:   c.KVEventDelay,
	}, nil
}

// Resolved returns the resolved configuration instance i runs, in the form a real engine
// reports it (engine.Engine.Resolved): what to compare between the two worlds.
func (c Config) Resolved(i int) (serving.EngineConfig, error) {
	bp, err := c.NewBatch(i)
	if err != nil {
		return serving.EngineConfig{}, err
	}
	evictSpec := "lru" // the block manager's policy when NewEvict is nil
	if c.NewEvict != nil {
		ep, err := c.NewEvict(i)
		if err != nil {
			return serving.EngineConfig{}, err
		}
		evictSpec = ep.Spec().String()
	}
	return serving.EngineConfig{
		Batch:               bp.Spec().String(),
		Evict:               evictSpec,
		BlockSize:           c.BlockSize,
		NumGPUBlocks:        c.KVBlocks,
		MaxModelLen:         c.MaxModelLen,
		EnablePrefixCaching: c.PrefixCaching,
	}, nil
}
