package serving

// InstanceView is what a router knows of one instance when it routes a request: exact in
// the simulator, scraped from /metrics (and possibly stale) in the real router.
type InstanceView struct {
	// Index is the instance's position in the cluster; routers return it.
	Index int
	// Name identifies the instance to people (an endpoint URL in the real router).
	Name string
	// Waiting and Running are vLLM's num_requests_waiting and num_requests_running.
	Waiting, Running int
	// KVUsage is vLLM's kv_cache_usage_perc, a fraction in [0, 1].
	KVUsage float64
	// Cache answers exact prefix-cache queries where the instance can (the simulator, or the
	// real router fed by KV events); nil where it cannot.
	Cache PrefixCache
}

// PrefixCache tells how much of a request's prompt an instance already holds.
type PrefixCache interface {
	// CachedPrefixBlocks returns how many leading blocks of hashes are cached.
	CachedPrefixBlocks(hashes []uint64) int
}

// Load is waiting plus running requests, the quantity least-request routing minimises.
func (v *InstanceView) Load() int { return v.Waiting + v.Running }
