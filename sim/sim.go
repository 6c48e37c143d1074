// Package sim is a discrete-event simulator of an LLM serving cluster: instances running
// the real engine core (scheduler, KV block manager, batch and evict policies) with a
// latency model in place of a GPU, behind a router running a real routing policy, driven by
// a trace.
//
// Cost model: an instance's steps are independent of the rest of the cluster until the
// next arrival, the only event that reads or changes more than one instance. So when an
// instance's step ends before the next arrival, the simulator plans and completes its next
// step at once instead of queueing an event for it; the event queue only ever holds one
// pending step per busy instance, and a long decode phase costs one loop iteration per
// step with no heap traffic.
package sim

import (
	"errors"
	"fmt"
	"io"
	"math"

	"servelab/engine/core"
	"servelab/engine/kv"
	"servelab/metrics"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/flow"
	"servelab/policies/route"
	"servelab/serving"
	"servelab/sim/latency"
	"servelab/traces"
)

// Config describes a simulated cluster.
type Config struct {
	Instances int
	Router    route.Policy
	// NewBatch and NewEvict build one policy object per instance (policies keep state).
	NewBatch func(instance int) (batch.Policy, error)
	NewEvict func(instance int) (evict.Policy, error)
	// KVBlocks and BlockSize size each instance's KV cache.
	KVBlocks, BlockSize int
	// PrefixCaching is vLLM's --enable-prefix-caching.
	PrefixCaching bool
	// MaxModelLen rejects requests whose prompt plus output exceed it (0: no limit besides
	// the KV cache's capacity).
	MaxModelLen int
	Latency     latency.Model
	SLO         metrics.SLO
	// OnRecord, if set, receives every finished or rejected request's record.
	OnRecord func(*serving.Record) error
	// OnSample, if set, receives the cluster's state every SampleInterval simulated
	// seconds (SampleInterval must then be positive) while requests remain, as of that
	// instant: every step ending and every request arriving by then has been applied; and
	// a last time when the last request finishes, so the series ends with every request.
	OnSample       func(Sample) error
	SampleInterval float64
	// ScrapeInterval, if positive, is how often the router reads the instances' gauges
	// (waiting, running, KV usage), as the real router scrapes /metrics (servelab router
	// --scrape-interval, GIE's refresh-metrics-interval; both default to 50 ms): a request
	// is routed on the gauges as of the last multiple of ScrapeInterval at or before its
	// arrival, so a burst is routed on one reading. Exact prefix caches (InstanceView.Cache)
	// stay live unless KVEventDelay is positive. 0 reads the gauges at every arrival.
	ScrapeInterval float64
	// KVEventDelay, if positive, makes the router's view of each instance's prefix cache
	// (InstanceView.Cache, which llm-d's precise-prefix-cache-scorer reads) an index built
	// from the instance's KV events, as the real router's is: an instance publishes the
	// events of a step when the step ends, and the router applies them KVEventDelay seconds
	// later (serving.DefaultKVEventDelay is what servelab router takes on loopback). 0
	// routes on each instance's live cache, visible from the moment a block is scheduled.
	// The router-local index of prefix-affinity and prefix-cache-scorer is the router's own
	// and never lags; for a router that reads no cache (route.ReadsCaches) the index is
	// not kept, and costs nothing.
	KVEventDelay float64
	// Pools, if set, split the Instances into pools, numbered in order (pool 0's instances
	// first): each instance steps with its pool's latency model and has its pool's KV
	// blocks, and the run's summary reports the pools' cost. Their instances must add up to
	// Instances. Empty: every instance has Latency and KVBlocks, and no cost is reported.
	Pools []Pool
	// OnStep, if set, receives every step an instance completes, as it completes. An
	// instance's steps come in order; steps of different instances interleave in no
	// particular order (the simulator runs an instance ahead until the next arrival). It
	// is an observer: what it returns other than an error changes nothing.
	OnStep func(StepInfo) error
	// KVTiers, if set, are every instance's KV-cache tiers below the accelerator, top
	// down: evicted blocks offload to them, and a prefix found on one is loaded back at
	// its bandwidth and latency (see loadTime). The latency models must know the KV bytes
	// per token (the roofline does). Empty: blocks evicted from the GPU are dropped.
	KVTiers []KVTier
	// Disagg, if set, runs prefill/decode disaggregation (see disagg.go): the pools of
	// role RolePrefill run prefills for the others, and Router is the decode profile's
	// router. It needs Pools with at least one prefill and one other pool.
	Disagg *Disagg
	// Autoscale, if set, makes the cluster elastic (see scale.go): Instances are then
	// slots, of which the scaling policy starts and drains instances.
	Autoscale *Autoscale
	// FlowControl, if set, is the router's flow control (policies/flow, GIE's): while the
	// instances are saturated on the scraped gauges, arriving requests are held, released
	// at scrapes by priority and fairness, or refused (flow.go). It needs ScrapeInterval.
	FlowControl *flow.Config
	// Objectives give each request's objective (serving.Request.Objective) its priority
	// (GIE's InferenceObjective spec.priority); a request with an objective and no priority
	// of its own runs at flow.EnginePriority of it in the engines.
	Objectives flow.Objectives
	// OnFlowDecision, if set, receives every flow-control decision as it is taken.
	OnFlowDecision func(flow.Decision) error
	// OnScrape, if set, receives each scrape's time and the gauges it read, by instance
	// (what each instance's /metrics served then), before anything is routed on them.
	OnScrape func(t float64, gauges []serving.InstanceView) error
}

// Pool is a group of identical instances (llm-d's and KServe's pool of model servers).
type Pool struct {
	Name      string
	Instances int
	Latency   latency.Model
	KVBlocks  int
	// GPUs is the accelerators one instance takes (its tensor-parallel size; 0: none
	// that cost anything known), and PricePerGPUHour what one costs an hour, in US dollars.
	GPUs            int
	PricePerGPUHour float64
	// Role is RoleBoth (or empty), RolePrefill or RoleDecode; prefill pools need Disagg.
	Role string
}

// StepInfo is one completed simulated step, in the terms a real engine's step log uses.
type StepInfo struct {
	Instance int
	// Start and End are when the step began and ended, in simulated seconds.
	Start, End float64
	Shape      serving.StepShape
	// Running and Waiting (vllm:num_requests_running and _waiting) and KVBlocksUsed (the
	// blocks requests reference: kv_cache_usage_perc times the blocks) are the instance's
	// state after the step.
	Running, Waiting, KVBlocksUsed int
}

// Sample is the cluster at one instant of simulated time: gauges summed over instances
// under vLLM's names, and counters since the start, from which a caller takes rates.
type Sample struct {
	Time float64
	// Running and Waiting are summed vllm:num_requests_running / _waiting.
	Running, Waiting int
	// KVCacheUsage is the mean over instances of vllm:kv_cache_usage_perc.
	KVCacheUsage float64
	// Instances is the instances started (billed: starting, ready or draining) and Ready
	// those taking requests; both are Config.Instances without autoscaling.
	Instances, Ready int
	// Completed and OutputTokens count finished requests and their output tokens so far.
	Completed    int64
	OutputTokens int64
	// PrefixCacheQueries and PrefixCacheHits are the instances' cumulative counters.
	PrefixCacheQueries, PrefixCacheHits int64
}

// Result is what a run produced.
type Result struct {
	Summary metrics.Summary
	// Requests is the number of trace rows read.
	Requests int64
	// Steps is the engine steps executed across instances.
	Steps int64
	// Events is the step-end events that went through the event queue; the rest of the
	// steps were run ahead without one.
	Events int64
	// Failures counts the requests that could not be served, by reason ("context exceeds
	// max_model_len", "context exceeds KV cache"), with the first request's message.
	Failures metrics.Failures
}

type instance struct {
	core *core.Instance
	busy bool
	step *serving.Step
	// start is when step began (for Config.OnStep).
	start float64
	// kv is the router's prefix index of the instance when KVEventDelay is positive.
	kv *kvIndex
	// gauges are what the instance's /metrics would say: its state as of the end of its
	// last step, or of going idle (kept when ScrapeInterval is positive; see publish).
	gauges serving.InstanceView
	// lat and blocks are the instance's pool's latency model and KV blocks.
	lat    latency.Model
	blocks int
	// blockBytes is one KV block's bytes on one GPU, and loaded the blocks loaded from
	// each lower tier so far, when there are tiers.
	blockBytes float64
	loaded     []int64
	loadSecs   []float64 // per tier below the GPU, the load time charged
	// prefill marks an instance of a prefill pool: its step ends start KV transfers to
	// other instances, so they all go through the event queue (disagg.go).
	prefill bool
}

type simulation struct {
	cfg       Config
	instances []instance
	views     []serving.InstanceView
	// scraped holds the gauges as of lastScrape when ScrapeInterval is positive.
	scraped    []serving.InstanceView
	lastScrape float64
	queue      eventQueue
	collector  *metrics.Collector
	result     Result
	lastEnd    float64
	capacity   int
	// minBlocks is the smallest instance's KV blocks; mixedBlocks says the pools differ.
	minBlocks   int
	mixedBlocks bool
	// completed and outputTokens feed samples.
	completed, outputTokens int64
	err                     error
	// pd is the disaggregation state when Config.Disagg is set.
	pd *pdState
	// scale is the autoscaling state when Config.Autoscale is set.
	scale *scaleState
	// flow is the router's flow control when Config.FlowControl is set (flow.go).
	flow *flowState
	// arms summarises each arm of an A/B test of routing policies (Router a *route.AB,
	// ab.go); nil without one.
	arms *metrics.Arms
	// queueEveryStep sends every step through the event queue, the plain discrete-event
	// schedule that running ahead must reproduce exactly (tests compare the two).
	queueEveryStep bool
}

// Run simulates the trace read from src.
func Run(cfg Config, src traces.Reader) (Result, error) {
	s, err := newSimulation(cfg)
	if err != nil {
		return Result{}, err
	}
	return s.run(src)
}

func newSimulation(cfg Config) (*simulation, error) {
	switch {
	case cfg.Instances <= 0:
		return nil, fmt.Errorf("sim: instances must be positive, got %d", cfg.Instances)
	case cfg.Router == nil:
		return nil, fmt.Errorf("sim: no router policy")
	case len(cfg.Pools) == 0 && cfg.Latency == nil:
		return nil, fmt.Errorf("sim: no latency model")
	case cfg.OnSample != nil && !(cfg.SampleInterval > 0):
		return nil, fmt.Errorf("sim: sample interval must be positive, got %v", cfg.SampleInterval)
	case len(cfg.Pools) == 0 && cfg.KVBlocks <= 0:
		return nil, fmt.Errorf("sim: KV blocks must be positive, got %d", cfg.KVBlocks)
	case cfg.ScrapeInterval < 0 || math.IsNaN(cfg.ScrapeInterval) || math.IsInf(cfg.ScrapeInterval, 0):
		return nil, fmt.Errorf("sim: scrape interval must be 0 or positive and finite, got %v", cfg.ScrapeInterval)
	case cfg.KVEventDelay < 0 || math.IsNaN(cfg.KVEventDelay) || math.IsInf(cfg.KVEventDelay, 0):
		return nil, fmt.Errorf("sim: KV-event delay must be 0 or positive and finite, got %v", cfg.KVEventDelay)
	}
	if cfg.BlockSize <= 0 {
		cfg.BlockSize = 16
	}
	pools := cfg.Pools
	if len(pools) == 0 {
		pools = []Pool{{Instances: cfg.Instances, Latency: cfg.Latency, KVBlocks: cfg.KVBlocks}}
	}
	total := 0
	for _, p := range pools {
		switch {
		case p.Instances <= 0:
			return nil, fmt.Errorf("sim: pool %q: instances must be positive, got %d", p.Name, p.Instances)
		case p.Latency == nil:
			return nil, fmt.Errorf("sim: pool %q: no latency model", p.Name)
		case p.KVBlocks <= 0:
			return nil, fmt.Errorf("sim: pool %q: KV blocks must be positive, got %d", p.Name, p.KVBlocks)
		case p.GPUs < 0 || p.PricePerGPUHour < 0 || math.IsNaN(p.PricePerGPUHour) || math.IsInf(p.PricePerGPUHour, 0):
			return nil, fmt.Errorf("sim: pool %q: GPUs and price must be 0 or positive and finite, got %d and %v", p.Name, p.GPUs, p.PricePerGPUHour)
		}
		switch p.Role {
		case "", RoleBoth, RoleDecode:
		case RolePrefill:
			if cfg.Disagg == nil {
				return nil, fmt.Errorf("sim: pool %q: role prefill needs Config.Disagg", p.Name)
			}
		default:
			return nil, fmt.Errorf("sim: pool %q: unknown role %q", p.Name, p.Role)
		}
		total += p.Instances
	}
	if total != cfg.Instances {
		return nil, fmt.Errorf("sim: the pools have %d instances, the cluster %d", total, cfg.Instances)
	}
	s := &simulation{
		cfg:        cfg,
		instances:  make([]instance, cfg.Instances),
		views:      make([]serving.InstanceView, cfg.Instances),
		scraped:    make([]serving.InstanceView, cfg.Instances),
		lastScrape: math.Inf(-1),
		collector:  metrics.NewCollector(cfg.SLO),
		capacity:   math.MaxInt,
		result:     Result{Failures: metrics.Failures{}},
	}
	// A request must fit the smallest instance's KV cache: the router may send it to any.
	roles := make([]string, 0, cfg.Instances)
	for i, p := 0, 0; i < len(s.instances); p++ {
		for range pools[p].Instances {
			roles = append(roles, pools[p].Role)
			s.instances[i].lat, s.instances[i].blocks = pools[p].Latency, pools[p].KVBlocks
			i++
		}
		s.capacity = min(s.capacity, pools[p].KVBlocks*cfg.BlockSize)
		if p > 0 && pools[p].KVBlocks != s.minBlocks {
			s.mixedBlocks = true
		}
		if p == 0 || pools[p].KVBlocks < s.minBlocks {
			s.minBlocks = pools[p].KVBlocks
		}
	}
	if cfg.MaxModelLen > 0 {
		s.capacity = min(s.capacity, cfg.MaxModelLen)
	}
	for i := range s.instances {
		b, err := cfg.NewBatch(i)
		if err != nil {
			return nil, err
		}
		var e evict.Policy
		if cfg.NewEvict != nil {
			if e, err = cfg.NewEvict(i); err != nil {
				return nil, err
			}
		}
		kc := kv.Config{
			NumBlocks:           s.instances[i].blocks,
			BlockSize:           cfg.BlockSize,
			EnablePrefixCaching: cfg.PrefixCaching,
			Evict:               e,
		}
		if len(cfg.KVTiers) > 0 {
			kb, ok := s.instances[i].lat.(kvBytesPerToken)
			if !ok || !(kb.KVBytesPerToken() > 0) {
				return nil, fmt.Errorf("sim: KV tiers need the KV bytes per token to price loads, which latency model %s does not know (use the roofline model, or a profile that records kv_bytes_per_token)", s.instances[i].lat.Name())
			}
			s.instances[i].blockBytes = kb.KVBytesPerToken() * float64(cfg.BlockSize)
			s.instances[i].loaded = make([]int64, len(cfg.KVTiers))
			s.instances[i].loadSecs = make([]float64, len(cfg.KVTiers))
			for _, t := range cfg.KVTiers {
				if !(t.BandwidthBytesPerS > 0) || math.IsInf(t.BandwidthBytesPerS, 0) || t.LatencyS < 0 || math.IsNaN(t.LatencyS) || math.IsInf(t.LatencyS, 0) {
					return nil, fmt.Errorf("sim: KV tier %s: bandwidth must be positive and latency 0 or positive, got %v B/s and %v s", t.Medium, t.BandwidthBytesPerS, t.LatencyS)
				}
				tc := kv.TierConfig{Medium: t.Medium, Blocks: t.Blocks}
				if t.NewEvict != nil {
					if tc.Evict, err = t.NewEvict(i); err != nil {
						return nil, err
					}
				}
				kc.Tiers = append(kc.Tiers, tc)
			}
		}
		// The pd decider reads the decode instance's cache too, as llm-d's reads the
		// prefix scorer's state. A prefill instance's cache is read only by the prefill
		// profile's router, and only one that reads caches needs its index kept (with
		// least-request there, 16 prefill + 48 decode instances on 1M requests spent a
		// tenth of their time replaying prefill instances' events nobody read).
		reads := route.ReadsCaches(cfg.Router) || cfg.Disagg != nil
		if cfg.Disagg != nil && roles[i] == RolePrefill {
			reads = route.ReadsCaches(cfg.Disagg.PrefillRouter)
		}
		if cfg.KVEventDelay > 0 && cfg.PrefixCaching && reads {
			s.instances[i].kv = newKVIndex(s.instances[i].blocks)
			kc.Events = s.instances[i].kv.collect
		}
		c, err := core.New(core.Config{Index: i, Batch: b, KV: kc})
		if err != nil {
			return nil, err
		}
		s.instances[i].core = c
	}
	if cfg.Disagg != nil {
		if err := s.initDisagg(roles); err != nil {
			return nil, err
		}
	}
	if cfg.Autoscale != nil {
		if err := s.initScale(); err != nil {
			return nil, err
		}
	}
	if err := s.initFlow(); err != nil {
		return nil, err
	}
	if err := s.initAB(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *simulation) run(src traces.Reader) (Result, error) {
	next, more, err := s.read(src)
	if err != nil {
		return Result{}, err
	}
	nextSample := math.Inf(1)
	if s.cfg.OnSample != nil {
		nextSample = s.cfg.SampleInterval
	}
	for s.err == nil && (more || len(s.queue) > 0 || s.flowPending()) {
		arrival := math.Inf(1)
		if more {
			arrival = next.Arrival
		}
		// A sample is a horizon like an arrival: no instance runs ahead past it, so the
		// state it reads is exact. So is the scrape the next arrival is routed on.
		horizon := min(arrival, nextSample)
		scrape := min(s.scrapeBefore(arrival), s.nextFlowScrape())
		horizon = min(horizon, scrape, s.scaleNext())
		// Step ends at the same time as an arrival go first: the request joins the queues
		// the finished step left behind.
		if len(s.queue) > 0 && s.queue.peek().at <= horizon {
			e := s.queue.pop()
			if s.pd != nil {
				if s.crossEvent(e) {
					s.pd.cross.pop()
				}
				if e.xfer != nil {
					s.land(e.xfer, e.at)
					continue
				}
				// No instance runs ahead past a pending prefill step end or transfer,
				// which may put a request on it.
				horizon = min(horizon, s.pd.cross.peek())
			}
			s.result.Events++
			s.advance(e.instance, e.at, horizon)
			continue
		}
		if s.cfg.OnSample != nil && nextSample <= arrival && nextSample <= scrape {
			s.sample(nextSample)
			nextSample += s.cfg.SampleInterval
			continue
		}
		if at := s.scaleNext(); at <= arrival && at <= scrape {
			s.decide(at)
			continue
		}
		if scrape <= arrival {
			s.scrape(scrape)
			if s.flow != nil {
				s.flowPump(scrape)
			}
			continue
		}
		s.arrive(next)
		if next, more, err = s.read(src); err != nil {
			return Result{}, err
		}
	}
	if s.cfg.OnSample != nil && s.err == nil && s.lastEnd > nextSample-s.cfg.SampleInterval {
		s.sample(s.lastEnd)
	}
	if s.err != nil {
		return Result{}, s.err
	}
	for i := range s.instances {
		if !s.instances[i].core.Idle() {
			in := s.instances[i].core
			return Result{}, fmt.Errorf("sim: instance %d stopped with %d waiting and %d running requests that cannot be scheduled", i, in.NumWaiting(), in.NumRunning())
		}
	}
	if s.pd != nil && len(s.pd.inflight) > 0 {
		return Result{}, fmt.Errorf("sim: %d disaggregated requests never finished", len(s.pd.inflight))
	}
	var eng metrics.EngineCounters
	for i := range s.instances {
		st := s.instances[i].core.Stats()
		eng.PrefixCacheQueries += st.PrefixCacheQueries
		eng.PrefixCacheHits += st.PrefixCacheHits
		eng.Preemptions += st.Preemptions
		s.result.Steps += st.Steps
	}
	s.result.Summary = s.collector.Summary(s.lastEnd, eng)
	s.result.Summary.KVTiers = s.tierSummary(eng.PrefixCacheQueries)
	s.result.Summary.Cost = s.cost()
	if s.scale != nil {
		s.result.Summary.Autoscale = s.scaleSummary(s.lastEnd)
		s.result.Summary.Cost = s.scaledCost(s.result.Summary.Autoscale)
	}
	s.result.Summary.Arms = s.arms.Summaries(s.lastEnd)
	if s.pd != nil {
		d := &metrics.Disaggregation{Requests: s.pd.count, Link: s.pd.cfg.Link.Name}
		if d.Requests > 0 {
			d.MeanKVTransfer = s.pd.transferSeconds / float64(d.Requests)
		}
		s.result.Summary.Disaggregation = d
	}
	return s.result, nil
}

// cost prices the pools' GPUs over the run's duration; nil when no pool has GPUs.
func (s *simulation) cost() *metrics.Cost {
	var c *metrics.Cost
	for _, p := range s.cfg.Pools {
		if p.GPUs == 0 {
			continue
		}
		if c == nil {
			c = &metrics.Cost{}
		}
		h := float64(p.Instances*p.GPUs) * s.lastEnd / 3600
		c.GPUHours += h
		c.USD += h * p.PricePerGPUHour
	}
	if c != nil && c.USD > 0 {
		c.GoodputPerDollar = float64(s.collector.Good()) / c.USD
	}
	return c
}

// read returns the next trace row as a request.
func (s *simulation) read(src traces.Reader) (*serving.Request, bool, error) {
	row, err := src.Next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, false, nil
		}
		return nil, false, err
	}
	id := uint64(s.result.Requests)
	s.result.Requests++
	return RequestFromRow(id, row, s.cfg.BlockSize), true, nil
}

// RequestFromRow turns a trace row into a request for an engine with the given block
// size, mapping the trace's prefix hash ids onto the engine's blocks.
func RequestFromRow(id uint64, row traces.Row, blockSize int) *serving.Request {
	return &serving.Request{
		ID:           id,
		Arrival:      row.Arrival,
		PromptTokens: row.InputTokens,
		MaxTokens:    max(row.OutputTokens, 1),
		BlockHashes:  serving.TraceBlockHashes(row.HashIDs, row.HashBlockSize, row.InputTokens, blockSize, id),
		Session:      row.Session,
		Priority:     row.Priority,
		Objective:    row.Objective,
		FairnessID:   row.FairnessID,
		TTFTSLO:      row.TTFTSLOMs / 1000,
		AvgTPOTSLO:   row.TPOTSLOMs / 1000,
	}
}

func (s *simulation) arrive(req *serving.Request) {
	s.countArrival()
	s.assignArm(req)
	if need := req.PromptTokens + req.MaxTokens; need > s.capacity {
		// As vLLM: a request longer than max_model_len is refused (a 400); one that fits
		// the context but not an instance's whole KV cache could never be scheduled.
		kind := "context exceeds KV cache"
		which := "an instance's"
		if s.mixedBlocks {
			// The router may send it to any instance, the smallest included.
			which = "the smallest instance's"
		}
		msg := fmt.Sprintf("request %d needs %d tokens of context (%d prompt + %d output), more than %s KV cache holds (%d blocks of %d tokens)",
			req.ID, need, req.PromptTokens, req.MaxTokens, which, s.minBlocks, s.cfg.BlockSize)
		if s.cfg.MaxModelLen > 0 && need > s.cfg.MaxModelLen {
			kind = "context exceeds max_model_len"
			msg = fmt.Sprintf("request %d needs %d tokens of context (%d prompt + %d output), more than max_model_len %d",
				req.ID, need, req.PromptTokens, req.MaxTokens, s.cfg.MaxModelLen)
		}
		s.result.Failures.Add(kind, msg)
		s.emit(&serving.Record{
			ID: req.ID, Instance: -1, Arrival: req.Arrival, PromptTokens: req.PromptTokens,
			Failed: true, Error: msg, Arm: req.Arm,
		})
		return
	}
	if req.Objective != "" && req.Priority == 0 {
		req.Priority = flow.EnginePriority(s.cfg.Objectives.Priority(req.Objective))
	}
	s.buildViews(req.Arrival)
	if s.flow != nil {
		s.flowArrive(req)
		return
	}
	var target int
	if s.pd != nil {
		var err error
		if target, req, err = s.routePD(req); err != nil {
			s.fail(err)
			return
		}
	} else if views := s.routable(req.Arrival); len(views) == len(s.views) {
		target = s.cfg.Router.Route(req, views)
	} else if k := s.cfg.Router.Route(req, views); k >= 0 && k < len(views) {
		target = views[k].Index
	} else {
		target = -1
	}
	s.dispatch(req, target, req.Arrival)
}

// buildViews fills the router's views of the instances as of t.
func (s *simulation) buildViews(t float64) {
	for i := range s.instances {
		s.views[i] = s.instances[i].core.View()
		if s.cfg.ScrapeInterval > 0 {
			sc := &s.scraped[i]
			s.views[i].Waiting, s.views[i].Running, s.views[i].KVUsage = sc.Waiting, sc.Running, sc.KVUsage
		}
		if x := s.instances[i].kv; x != nil {
			x.catchUp(t)
			s.views[i].Cache = x
		}
	}
}

// dispatch sends req to instance target at t.
func (s *simulation) dispatch(req *serving.Request, target int, t float64) {
	if target < 0 || target >= len(s.instances) {
		s.err = fmt.Errorf("sim: router returned instance %d of %d", target, len(s.instances))
		return
	}
	in := &s.instances[target]
	in.core.Add(req)
	if !in.busy {
		if end, ok := s.plan(target, t); ok {
			s.push(stepEnd{at: end, instance: target})
		}
	}
}

// advance completes instance i's step that ended at t, then keeps running its next steps
// while they end by horizon (no arrival can change them), queueing the first that does not.
func (s *simulation) advance(i int, t, horizon float64) {
	for {
		s.complete(i, t)
		end, ok := s.plan(i, t)
		if !ok {
			return
		}
		if end > horizon || s.queueEveryStep || s.instances[i].prefill {
			s.push(stepEnd{at: end, instance: i})
			return
		}
		t = end
	}
}

// plan plans instance i's step starting at t and returns when it ends; ok is false when
// the instance has nothing to run and goes idle.
func (s *simulation) plan(i int, t float64) (end float64, ok bool) {
	in := &s.instances[i]
	in.step = in.core.Plan(t)
	in.start = t
	in.busy = !in.step.Empty()
	if !in.busy {
		if in.kv != nil {
			in.kv.publish(t, s.cfg.KVEventDelay) // as the engine flushes when it goes idle
		}
		s.publish(in)
		s.idle(i, t)
		return 0, false
	}
	end = t + in.lat.StepTime(in.step.Shape)
	if in.loaded != nil {
		end += s.loadTime(in)
	}
	return end, true
}

func (s *simulation) complete(i int, t float64) {
	in := &s.instances[i]
	if s.pd != nil && in.prefill {
		// The block tables of the step's prefill halves, which Complete empties as it frees
		// the finished ones: sendKV finds their blocks through them. Free leaves the
		// tables' backing arrays as they were, and nothing else writes them before sendKV.
		s.pd.tables = s.pd.tables[:0]
		for k := range in.step.Seqs {
			s.pd.tables = append(s.pd.tables, in.step.Seqs[k].Seq.Blocks)
		}
	}
	finished := in.core.Complete(in.step, t)
	if s.cfg.OnStep != nil && s.err == nil {
		kv := in.core.KV()
		s.err = s.cfg.OnStep(StepInfo{
			Instance: i, Start: in.start, End: t, Shape: in.step.Shape,
			Running: in.core.NumRunning(), Waiting: in.core.NumWaiting(), KVBlocksUsed: kv.NumBlocks() - kv.NumFree(),
		})
	}
	if in.kv != nil {
		in.kv.publish(t, s.cfg.KVEventDelay)
	}
	s.publish(in)
	for k := range in.step.Seqs {
		sc := &in.step.Seqs[k]
		if sc.Emitted && sc.Seq.NumOutput >= 2 {
			s.collector.AddITL(sc.Seq.LastToken - sc.Seq.PrevToken)
			s.arms.AddITL(sc.Seq.Req.Arm, sc.Seq.LastToken-sc.Seq.PrevToken)
		}
	}
	next := 0 // Complete lists the finished in step order
	for _, seq := range finished {
		var x *pdReq
		if s.pd != nil {
			if x = s.pd.inflight[seq.Req]; x != nil && seq.Req == x.half {
				var hint []int32
				if in.prefill {
					for next < len(in.step.Seqs) && in.step.Seqs[next].Seq != seq {
						next++
					}
					if next < len(in.step.Seqs) {
						hint = s.pd.tables[next]
					}
				}
				s.sendKV(x, seq, hint, t)
				continue
			}
		}
		rec := serving.NewRecord(seq)
		if x != nil {
			s.decodeRecord(x, &rec)
		}
		s.emit(&rec)
	}
}

// scrapeBefore returns the time of the scrape an arrival at t is routed on when that
// scrape has not been taken yet, and +Inf otherwise (or with no scraping, or no arrival).
func (s *simulation) scrapeBefore(t float64) float64 {
	d := s.cfg.ScrapeInterval
	if !(d > 0) || math.IsInf(t, 1) {
		return math.Inf(1)
	}
	at := math.Floor(t/d) * d
	if at > t { // rounding
		at -= d
	}
	if at <= s.lastScrape {
		return math.Inf(1)
	}
	return at
}

// publish takes the instance's gauges as the real engine does: after each step and when
// it goes idle (engine.publishStats, which /metrics serves; vLLM's scheduler stats are
// likewise per step). A request that arrives meanwhile is in no gauge until the step after
// it ends. Only a scraping router reads them; with ScrapeInterval 0 the router reads each
// instance live, as before.
func (s *simulation) publish(in *instance) {
	if s.cfg.ScrapeInterval > 0 {
		in.gauges = in.core.View()
	}
}

// scrape reads every instance's gauges, as last published, at t.
func (s *simulation) scrape(t float64) {
	for i := range s.instances {
		s.scraped[i] = s.instances[i].gauges
	}
	s.lastScrape = t
	if s.cfg.OnScrape != nil && s.err == nil {
		s.err = s.cfg.OnScrape(t, s.scraped)
	}
}

// sample reports the cluster's state at t.
func (s *simulation) sample(t float64) {
	smp := Sample{Time: t, Completed: s.completed, OutputTokens: s.outputTokens}
	smp.Instances, smp.Ready = s.instanceCounts()
	for i := range s.instances {
		c := s.instances[i].core
		v := c.View()
		smp.Running += v.Running
		smp.Waiting += v.Waiting
		smp.KVCacheUsage += v.KVUsage / float64(max(smp.Ready, 1)) // off and starting instances hold nothing
		st := c.Stats()
		smp.PrefixCacheQueries += st.PrefixCacheQueries
		smp.PrefixCacheHits += st.PrefixCacheHits
	}
	if err := s.cfg.OnSample(smp); err != nil && s.err == nil {
		s.err = err
	}
}

func (s *simulation) emit(r *serving.Record) {
	if r.Finish > s.lastEnd {
		s.lastEnd = r.Finish
	}
	if !r.Failed {
		s.completed++
		s.outputTokens += int64(r.OutputTokens)
	}
	s.collector.Add(r)
	s.countFinished(r)
	s.arms.Add(r)
	if s.cfg.OnRecord != nil && s.err == nil {
		s.err = s.cfg.OnRecord(r)
	}
}
