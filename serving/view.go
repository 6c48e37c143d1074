package serving

import "time"

// DefaultScrapeInterval is how often the router reads each instance's /metrics gauges
// (waiting, running, KV usage): llm-d's and GIE's DefaultRefreshMetricsInterval, which
// treat metrics older than 2 s as stale. servelab router scrapes this often unless told
// otherwise, and the simulator's router reads gauges as of its last scrape at this
// interval by default (sim.ClusterSpec.ScrapeInterval), so both worlds take it from here.
const DefaultScrapeInterval = 50 * time.Millisecond

// DefaultKVEventDelay is how long after the end of an engine step its KV events (the
// blocks it cached and evicted) reach the router's prefix index: the engine publishes a
// step's events when the step ends, its /v1/kv_events handler encodes them as JSON and
// writes them to the router's SSE subscription, and the router decodes and applies them.
// It is the simulator's default (sim.ClusterSpec.KVEventDelay), measured with servelab
// router's servelab_router_kv_event_lag_seconds on loopback: `servelab up --engines 2
// --model tiny --router weighted:precise-prefix=3,prefix=0,queue=2,kv=2` replaying
// examples/traces/mooncake_conv_500.jsonl (200 requests at --rate-scale 4, then 500 at 1),
// 216 batches: mean 2.0 ms, median about 0.9 ms, 90% within 5 ms, on 2 cores with load
// average 1.7-1.9 (2026-12-04). The mean is the default: it is how stale the index is on
// average. A busier host, or a router on another host, takes longer.
const DefaultKVEventDelay = 2 * time.Millisecond

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

// TieredPrefixCache is a PrefixCache that knows which tier holds each cached block, named
// by its KV-event medium ("GPU", "CPU", "DISK"; "" for a cache without tiers).
type TieredPrefixCache interface {
	PrefixCache
	// CachedPrefixWeight returns the leading cached blocks of hashes (those
	// CachedPrefixBlocks counts), each weighted by weight of the medium holding it.
	CachedPrefixWeight(hashes []uint64, weight func(medium string) float64) float64
}

// Load is waiting plus running requests, the quantity least-request routing minimises.
func (v *InstanceView) Load() int { return v.Waiting + v.Running }

// ServedEndpointHeader names, on a routed response, the endpoint (host:port) that served
// it. The Gateway API Inference Extension calls the endpoint that served a request
// x-gateway-destination-endpoint-served (pkg/lwepp/metadata/consts.go, where the data
// plane reports it back to the endpoint picker); servelab's router, gateway and picker in
// one, returns it to the client, so a load generator can attribute each request to an
// instance as the simulator's records do.
const ServedEndpointHeader = "x-gateway-destination-endpoint-served"

// RoutedAtHeader carries, on a routed response, when the router decided where the request
// goes (Unix time in nanoseconds, decimal). Requests a client sends within a millisecond of
// each other can reach the router's decision in another order than they were sent; a load
// generator on the router's clock (the same machine) reads the order in which the router
// actually saw them from it, which is what a replay in the simulator must reproduce for a
// policy with state (round-robin's turn, a prefix index) to decide alike. No Gateway API
// Inference Extension name exists for it.
const RoutedAtHeader = "x-servelab-routed-at"
