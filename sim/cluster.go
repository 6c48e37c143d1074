package sim

import (
	"fmt"
	"math"
	"strconv"
	"strings"

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
	// Pools, when set, is the cluster as a list of pools, each with its own instances, GPU
	// and tensor-parallel size; Instances, GPU and TP must then be left zero (UsePools does
	// that). Unset: one pool of Instances instances on GPU with TP.
	Pools []PoolSpec `json:"pools,omitempty"`
	// GPUPricePerHour overrides data/gpus.yaml's default US dollars per GPU-hour, by GPU
	// name, for the cost the summary reports.
	GPUPricePerHour map[string]float64 `json:"gpu_price_per_hour,omitempty"`
	// KVTiers, when set, are every instance's KV-cache tiers below the GPU, top down
	// (cpu, then disk): Config.KVTiers. Unset: evicted blocks are dropped.
	KVTiers []KVTierSpec `json:"kv_tiers,omitempty"`
	// PrefillRouter, NonCachedTokens and KVLink configure prefill/decode disaggregation,
	// on when a pool has role prefill (see disagg.go): Router is then the decode profile's
	// router and PrefillRouter the prefill profile's (empty: the same spec as Router, its
	// own object); NonCachedTokens is llm-d's prefix-based-pd-decider threshold (unset:
	// route.DefaultNonCachedTokens, 16; 0 disaggregates every request); KVLink is a link
	// preset, nvlink, rdma or tcp (empty: rdma).
	PrefillRouter   string `json:"prefill_router,omitempty"`
	NonCachedTokens *int   `json:"non_cached_tokens,omitempty"`
	KVLink          string `json:"kv_link,omitempty"`
	// Autoscale, when set, is a scaling policy spec (policies/scale, e.g.
	// "hpa:metric=queue,target=4,max-replicas=8") that starts and drains the one pool's
	// instances; Instances is then ignored (the policy's min-replicas start).
	// ScaleUpDelay is the seconds a started instance takes to become routable.
	Autoscale    string  `json:"autoscale,omitempty"`
	ScaleUpDelay float64 `json:"scale_up_delay_s,omitempty"`
	// FlowControl is the router's flow-control spec (policies/flow, servelab router
	// --flow-control; empty: off) and Objectives the InferenceObjectives' priorities by
	// name (--objective NAME=PRIORITY): Config.FlowControl and Config.Objectives.
	FlowControl string         `json:"flow_control,omitempty"`
	Objectives  map[string]int `json:"objectives,omitempty"`
	// ABRouter, when set, runs an online A/B test of routing policies (ab.go): ABFraction
	// of the requests (0 to 1), split by a hash of Seed and the request id, are routed by
	// ABRouter's policy (arm b), the rest by Router's (arm a), as servelab router
	// --ab-router and --ab-fraction split them.
	ABRouter   string  `json:"ab_router,omitempty"`
	ABFraction float64 `json:"ab_fraction,omitempty"`
}

// Pool roles. RoleBoth serves whole requests; RolePrefill and RoleDecode are the halves
// of prefill/decode disaggregation (llm-d's prefill and decode pods). A decode pool also
// serves whole requests the pd decider keeps off the prefill pool, as llm-d's decode pods
// do; so does a both pool in a disaggregated cluster.
const (
	RoleBoth    = "both"
	RolePrefill = "prefill"
	RoleDecode  = "decode"
)

// PoolSpec is one pool of a cluster: Instances engines of one role, each on TP GPUs.
type PoolSpec struct {
	Name string `json:"name"`
	// Role is RoleBoth (the default when empty), RolePrefill or RoleDecode.
	Role      string `json:"role,omitempty"`
	Instances int    `json:"instances"`
	GPU       string `json:"gpu"`
	// TP is the tensor-parallel size of each instance (0: 1).
	TP int `json:"tp,omitempty"`
}

// UsePools makes the cluster the given pools, clearing the one-pool fields they replace.
func (c *ClusterSpec) UsePools(pools []PoolSpec) {
	c.Pools = pools
	c.Instances, c.GPU, c.TP = 0, "", 0
}

// ParsePool parses the CLI's NAME:ROLE:INSTANCES:GPU[:TP] (--pool big:both:4:a100-80g:2).
func ParsePool(s string) (PoolSpec, error) {
	f := strings.Split(s, ":")
	if len(f) != 4 && len(f) != 5 {
		return PoolSpec{}, fmt.Errorf("pool %q: want NAME:ROLE:INSTANCES:GPU[:TP]", s)
	}
	p := PoolSpec{Name: f[0], Role: f[1], GPU: f[3], TP: 1}
	var err error
	if p.Instances, err = strconv.Atoi(f[2]); err != nil {
		return PoolSpec{}, fmt.Errorf("pool %q: instances %q is not an integer", s, f[2])
	}
	if len(f) == 5 {
		if p.TP, err = strconv.Atoi(f[4]); err != nil {
			return PoolSpec{}, fmt.Errorf("pool %q: tp %q is not an integer", s, f[4])
		}
	}
	return p, nil
}

// ResolvedPools is Pools with their defaults filled in (role both, tp 1), or nil when the
// spec is the one-pool form or its pools are bad (Build says why).
func (c ClusterSpec) ResolvedPools() []PoolSpec {
	if len(c.Pools) == 0 {
		return nil
	}
	pools, err := c.pools()
	if err != nil {
		return nil
	}
	out := make([]PoolSpec, len(pools))
	for i, p := range pools {
		out[i] = p.PoolSpec
	}
	return out
}

// resolvedPool is a pool with its defaults filled in and its key in error messages.
type resolvedPool struct {
	PoolSpec
	key string
	// gpus is the GPUs an instance takes, and price what one costs an hour; gpus is 0
	// for a GPU the table does not know (no cost is reported for it).
	gpus  int
	price float64
}

// pools checks the cluster's pools (or its one pool) and prices them.
func (c ClusterSpec) pools() ([]resolvedPool, error) {
	for name, v := range c.GPUPricePerHour {
		if _, err := latency.LookupGPU(name); err != nil {
			return nil, fmt.Errorf("gpu_price_per_hour: %w", err)
		}
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("gpu_price_per_hour.%s: must be 0 or a positive number of US dollars, got %v", name, v)
		}
	}
	var out []resolvedPool
	if len(c.Pools) == 0 {
		if c.Instances <= 0 {
			return nil, fmt.Errorf("instances: must be positive, got %d", c.Instances)
		}
		out = []resolvedPool{{PoolSpec: PoolSpec{Role: RoleBoth, Instances: c.Instances, GPU: c.GPU, TP: c.TP}}}
	} else {
		for _, f := range []struct {
			key string
			set bool
		}{{"instances", c.Instances != 0}, {"gpu", c.GPU != ""}, {"tp", c.TP != 0}} {
			if f.set {
				return nil, fmt.Errorf("%s: set together with pools; a cluster of pools gives each pool's instances, gpu and tp, leave %s out", f.key, f.key)
			}
		}
		seen := map[string]bool{}
		for i, p := range c.Pools {
			key := fmt.Sprintf("pools[%d]", i)
			switch {
			case p.Name == "":
				return nil, fmt.Errorf("%s.name: must be set", key)
			case strings.ContainsAny(p.Name, ": \t"):
				return nil, fmt.Errorf("%s.name: %q must not contain ':' or spaces", key, p.Name)
			case seen[p.Name]:
				return nil, fmt.Errorf("%s.name: pool %q appears twice", key, p.Name)
			case p.Instances <= 0:
				return nil, fmt.Errorf("%s.instances: must be positive, got %d", key, p.Instances)
			case p.TP < 0:
				return nil, fmt.Errorf("%s.tp: must be positive, got %d", key, p.TP)
			}
			seen[p.Name] = true
			if p.Role == "" {
				p.Role = RoleBoth
			}
			if p.TP == 0 {
				p.TP = 1
			}
			switch p.Role {
			case RoleBoth, RolePrefill, RoleDecode:
			default:
				return nil, fmt.Errorf("%s.role: unknown role %q (want %s, %s or %s)", key, p.Role, RoleBoth, RolePrefill, RoleDecode)
			}
			// A pool of a measured engine (latency profile:FILE or linear:FILE, the CPU
			// engine) may leave its GPU out, as the one-pool form may; it costs nothing known.
			if _, err := latency.LookupGPU(p.GPU); err != nil && !(p.GPU == "" && !strings.HasPrefix(c.Latency, "roofline")) {
				return nil, fmt.Errorf("%s.gpu: %w", key, err)
			}
			out = append(out, resolvedPool{PoolSpec: p, key: key + "."})
		}
		var prefill, decode bool
		for _, p := range out {
			prefill = prefill || p.Role == RolePrefill
			decode = decode || p.Role == RoleDecode
		}
		switch {
		case prefill && len(out) == countRole(out, RolePrefill):
			return nil, fmt.Errorf("pools: every pool has role prefill; disaggregation needs a decode pool to decode")
		case decode && !prefill:
			return nil, fmt.Errorf("pools: a pool has role decode but none has role prefill; give the prefill pool, or make the decode pool's role both")
		}
	}
	for i := range out {
		p := &out[i]
		g, err := latency.LookupGPU(p.GPU)
		if err != nil {
			// Only the one-pool form gets here, with a GPU that no step-time model needed:
			// a profiled engine's, "" for the CPU engine. It costs nothing known.
			continue
		}
		p.gpus, p.price = p.TP, g.PricePerHour
		if v, ok := c.GPUPricePerHour[g.Name]; ok {
			p.price = v
		}
	}
	return out, nil
}

func countRole(pools []resolvedPool, role string) int {
	n := 0
	for _, p := range pools {
		if p.Role == role {
			n++
		}
	}
	return n
}

// UseEngine makes every instance run the engine configuration ec, clearing the fields it
// replaces.
func (c *ClusterSpec) UseEngine(ec serving.EngineConfig) {
	c.Engine = &ec
	c.Batch, c.Evict, c.BlockSize, c.NumGPUBlocksOverride, c.MaxModelLen, c.EnablePrefixCaching = "", "", 0, 0, 0, false
	if len(ec.KVTiers) > 0 {
		c.KVTiers = nil
	}
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
		// An engine without tiers (or a configuration recorded before tiers existed) leaves
		// kv_tiers to the spec.
		{"kv_tiers", len(ec.KVTiers) > 0 && len(c.KVTiers) > 0},
	} {
		if f.set {
			return c, fmt.Errorf("%s: set, but the engine configuration (\"engine\") decides it; leave it out", f.name)
		}
	}
	c.Batch, c.Evict, c.BlockSize, c.NumGPUBlocksOverride = ec.Batch, ec.Evict, ec.BlockSize, ec.NumGPUBlocks
	c.MaxModelLen, c.EnablePrefixCaching = ec.MaxModelLen, ec.EnablePrefixCaching
	if len(ec.KVTiers) > 0 {
		// The engine's media, capacities and eviction policies, at the presets' load prices
		// (a real engine measures its loads; it has no prices to report).
		c.KVTiers = make([]KVTierSpec, len(ec.KVTiers))
		for i, t := range ec.KVTiers {
			c.KVTiers[i] = KVTierSpec{Medium: t.Medium, Blocks: t.Blocks, Evict: t.Evict}
		}
	}
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
	pools, err := c.pools()
	if err != nil {
		return Config{}, err
	}
	autoscale, err := c.autoscale(pools)
	if err != nil {
		return Config{}, err
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
	env := policies.Env{Seed: c.Seed, BlockSize: c.BlockSize, GPUClass: latency.GPUClass(pools[0].GPU)}
	c.withRouterLatency(&env, pools[0], slo)
	// Parse refuses what servelab router refuses of an EndpointPickerConfig's
	// kvEventsConfig (two in one file: the loader runs the router's own check), so a spec
	// runs in both worlds or in neither.
	router, err := route.Parse(c.Router, env)
	if err != nil {
		return Config{}, fmt.Errorf("router: %w", err)
	}
	// A P/D EndpointPickerConfig (llm-d's pd-profile-handler) routes with its decode profile
	// and, with a prefill pool, disaggregates with its prefill profile and decider.
	pd, _ := router.(*route.PDProfileHandler)
	if pd != nil {
		router = pd.Decode
	}
	if router, err = c.abRouter(env, router, pd != nil, countRole(pools, RolePrefill) > 0); err != nil {
		return Config{}, err
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
	if len(pools) > 1 && !strings.HasPrefix(c.Latency, "roofline") {
		for _, p := range pools[1:] {
			if !strings.EqualFold(p.GPU, pools[0].GPU) || p.TP != pools[0].TP {
				return Config{}, fmt.Errorf("latency: %q is one engine's step times; pools on different GPUs or tp (%s %s tp %d, %s %s tp %d) need the roofline model",
					c.Latency, pools[0].Name, pools[0].GPU, pools[0].TP, p.Name, p.GPU, p.TP)
			}
		}
	}
	cfg := Config{
		Autoscale:      autoscale,
		Router:         router,
		BlockSize:      c.BlockSize,
		PrefixCaching:  c.EnablePrefixCaching,
		SLO:            slo,
		ScrapeInterval: c.ScrapeInterval,
		KVEventDelay:   c.KVEventDelay,
	}
	// classes is each instance's GPU class, which batch and evict defaults depend on.
	var classes []string
	for _, p := range pools {
		lat, err := latency.Parse(c.Latency, p.GPU, c.Model, p.TP)
		if err != nil {
			return Config{}, fmt.Errorf("%slatency: %w", p.key, err)
		}
		blocks := c.NumGPUBlocksOverride
		if blocks <= 0 {
			if blocks, err = latency.KVCacheBlocks(lat, c.BlockSize, c.GPUMemoryUtilization); err != nil {
				if p.key != "" {
					err = fmt.Errorf("%s: %w", strings.TrimSuffix(p.key, "."), err)
				}
				return Config{}, err
			}
		}
		maxLen := c.MaxModelLen
		if maxLen <= 0 {
			maxLen = latency.MaxModelLen(lat)
		}
		if cfg.MaxModelLen == 0 || maxLen < cfg.MaxModelLen {
			cfg.MaxModelLen = maxLen
		}
		if cfg.Latency == nil {
			cfg.Latency, cfg.KVBlocks = lat, blocks
		}
		cfg.Instances += p.Instances
		cfg.Pools = append(cfg.Pools, Pool{Name: p.Name, Instances: p.Instances, Latency: lat, KVBlocks: blocks, GPUs: p.gpus, PricePerGPUHour: p.price, Role: p.Role})
		for range p.Instances {
			classes = append(classes, latency.GPUClass(p.GPU))
		}
	}
	if countRole(pools, RolePrefill) > 0 {
		if cfg.Disagg, err = c.disagg(env, pools, cfg.Pools, pd); err != nil {
			return Config{}, err
		}
	} else {
		for _, f := range []struct {
			key string
			set bool
		}{{"prefill_router", c.PrefillRouter != ""}, {"non_cached_tokens", c.NonCachedTokens != nil}, {"kv_link", c.KVLink != ""}} {
			if f.set {
				return Config{}, fmt.Errorf("%s: set, but no pool has role prefill; it configures prefill/decode disaggregation", f.key)
			}
		}
	}
	envOf := func(i int) policies.Env {
		e := env
		e.Seed = env.Seed + uint64(i) + 1
		if i >= 0 && i < len(classes) {
			e.GPUClass = classes[i]
		}
		return e
	}
	cfg.NewBatch = func(i int) (batch.Policy, error) { return batch.Registry.Build(batchSpec, envOf(i)) }
	cfg.NewEvict = func(i int) (evict.Policy, error) { return evict.Registry.Build(evictSpec, envOf(i)) }
	if cfg.KVTiers, err = buildKVTiers(c.KVTiers, envOf); err != nil {
		return Config{}, err
	}
	if c.Engine != nil {
		for i, t := range c.Engine.KVTiers {
			ep, err := cfg.KVTiers[i].NewEvict(0)
			if err != nil {
				return Config{}, fmt.Errorf("engine: kv_tiers[%d].evict: %w", i, err)
			}
			if got := ep.Spec().String(); got != t.Evict {
				return Config{}, fmt.Errorf("engine: kv_tiers[%d].evict %q is not a resolved spec (it builds %q)", i, t.Evict, got)
			}
		}
	}
	if len(cfg.KVTiers) > 0 && !c.EnablePrefixCaching {
		return Config{}, fmt.Errorf("kv_tiers: set without enable_prefix_caching; tiers hold cached prefix blocks")
	}
	if err := c.buildFlow(&cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
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
	rc := serving.EngineConfig{
		Batch:               bp.Spec().String(),
		Evict:               evictSpec,
		BlockSize:           c.BlockSize,
		NumGPUBlocks:        c.blocksOf(i),
		MaxModelLen:         c.MaxModelLen,
		EnablePrefixCaching: c.PrefixCaching,
	}
	tiers, err := ResolvedKVTiers(c.KVTiers, i)
	if err != nil {
		return serving.EngineConfig{}, err
	}
	rc.KVTiers = tiers
	return rc, nil
}

// blocksOf is instance i's KV blocks: its pool's.
func (c Config) blocksOf(i int) int {
	for _, p := range c.Pools {
		if i < p.Instances {
			return p.KVBlocks
		}
		i -= p.Instances
	}
	return c.KVBlocks
}

// prefillProfile is the prefill profile's router and the decider of a disaggregated
// cluster: pd's when the router is a P/D EndpointPickerConfig, else prefill_router (or the
// router's spec, its own object) and llm-d's prefix-based-pd-decider with non_cached_tokens.
func (c ClusterSpec) prefillProfile(env policies.Env, pd *route.PDProfileHandler) (route.Policy, route.PrefixBasedPDDecider, error) {
	decider := route.PrefixBasedPDDecider{NonCachedTokens: route.DefaultNonCachedTokens}
	switch {
	case pd != nil && c.PrefillRouter != "":
		return nil, decider, fmt.Errorf("prefill_router: set with router %s, a P/D EndpointPickerConfig whose prefill profile picks the prefill instance", c.Router)
	case pd != nil && c.NonCachedTokens != nil:
		return nil, decider, fmt.Errorf("non_cached_tokens: set with router %s, a P/D EndpointPickerConfig whose decider has its own threshold", c.Router)
	case pd != nil:
		return pd.Prefill, pd.Decider, nil
	}
	spec, key := c.PrefillRouter, "prefill_router"
	if spec == "" {
		spec, key = c.Router, "router"
	}
	prefill, err := route.Parse(spec, env)
	if err != nil {
		return nil, decider, fmt.Errorf("%s: %w", key, err)
	}
	if prd, ok := prefill.(*route.PDProfileHandler); ok {
		prefill = prd.Prefill
	}
	if c.NonCachedTokens != nil {
		decider.NonCachedTokens = *c.NonCachedTokens
	}
	if err := decider.Validate(); err != nil {
		return nil, decider, fmt.Errorf("non_cached_tokens: %w", err)
	}
	return prefill, decider, nil
}

// PDProfile is the P/D decision of a cluster with a prefill pool as one llm-d
// pd-profile-handler, for a real router to run: the router's own when it is a P/D
// EndpointPickerConfig, else the router as the decode profile, the prefill profile and the
// decider as the simulator builds them (prefillProfile), with llm-d's decode-filter and
// prefill-filter on the endpoints' roles. The simulator's disaggregation decides with the
// same objects, built by the same code.
func (c ClusterSpec) PDProfile(env policies.Env) (*route.PDProfileHandler, error) {
	router, err := route.Parse(c.Router, env)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	pd, _ := router.(*route.PDProfileHandler)
	prefill, decider, err := c.prefillProfile(env, pd)
	if err != nil {
		return nil, err
	}
	if pd != nil {
		return pd, nil
	}
	return &route.PDProfileHandler{Decode: router, Prefill: prefill, Decider: decider, BlockSize: env.BlockSize,
		DecodeFilter: route.DecodeRoleFilter(), PrefillFilter: route.PrefillRoleFilter()}, nil
}

// disagg builds the disaggregation configuration of a cluster with a prefill pool; pd,
// when the router is a P/D EndpointPickerConfig, gives the prefill profile and decider.
func (c ClusterSpec) disagg(env policies.Env, pools []resolvedPool, built []Pool, pd *route.PDProfileHandler) (*Disagg, error) {
	d := &Disagg{}
	for _, p := range pools {
		if p.Role == RolePrefill {
			env.GPUClass = latency.GPUClass(p.GPU)
			break
		}
	}
	var err error
	if d.PrefillRouter, d.Decider, err = c.prefillProfile(env, pd); err != nil {
		return nil, err
	}
	link := c.KVLink
	if link == "" {
		link = DefaultLink
	}
	if d.Link, err = LookupLink(link); err != nil {
		return nil, fmt.Errorf("kv_link: %w", err)
	}
	// The KV a token takes on one GPU: the larger of the pools' shards, since each
	// tensor-parallel rank sends (or receives) its own shard over its own link.
	for i, p := range built {
		b, ok := p.Latency.(interface{ KVBytesPerToken() float64 })
		if !ok || !(b.KVBytesPerToken() > 0) {
			return nil, fmt.Errorf("%slatency: %s does not know the KV bytes per token that disaggregation transfers; use the roofline model, or a profile that records kv_bytes_per_token", pools[i].key, p.Latency.Name())
		}
		d.KVBytesPerToken = max(d.KVBytesPerToken, b.KVBytesPerToken())
	}
	return d, nil
}
