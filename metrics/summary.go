// Package metrics turns per-request records into the summary that vLLM's benchmark
// (`vllm bench serve`) prints, under the same names and with the same definitions, so a
// simulated run and a measured one read alike.
package metrics

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/gonum/stat"

	"servelab/serving"
)

// SLO holds goodput targets in milliseconds, as vLLM's --goodput ttft:MS tpot:MS e2el:MS;
// zero means no target.
type SLO struct {
	TTFTMs, TPOTMs, E2ELMs float64
}

// ParseSLO reads "ttft:500,tpot:50" (entries may also be given one per string).
func ParseSLO(entries ...string) (SLO, error) {
	var slo SLO
	for _, entry := range entries {
		for _, kv := range strings.Split(entry, ",") {
			kv = strings.TrimSpace(kv)
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, ":")
			if !ok {
				return SLO{}, fmt.Errorf("goodput %q: want metric:milliseconds", kv)
			}
			ms, err := strconv.ParseFloat(v, 64)
			if err != nil || ms <= 0 || math.IsInf(ms, 0) {
				return SLO{}, fmt.Errorf("goodput %q: %q is not a positive number of milliseconds", kv, v)
			}
			switch k {
			case "ttft":
				slo.TTFTMs = ms
			case "tpot":
				slo.TPOTMs = ms
			case "e2el":
				slo.E2ELMs = ms
			default:
				return SLO{}, fmt.Errorf("goodput %q: unknown metric %q (want ttft, tpot or e2el)", kv, k)
			}
		}
	}
	return slo, nil
}

// Met reports whether a finished request met every target.
func (s SLO) Met(r *serving.Record) bool {
	if s.TTFTMs > 0 && r.TTFT()*1000 > s.TTFTMs {
		return false
	}
	if s.E2ELMs > 0 && r.E2E()*1000 > s.E2ELMs {
		return false
	}
	if tpot, ok := r.TPOT(); ok && s.TPOTMs > 0 && tpot*1000 > s.TPOTMs {
		return false
	}
	return true
}

// Summary is a run's result under vLLM benchmark names (times in ms, throughputs per
// second of duration), plus the cache and preemption counters of the engines.
type Summary struct {
	Completed            int     `json:"completed"`
	Failed               int     `json:"failed"`
	TotalInputTokens     int64   `json:"total_input_tokens"`
	TotalOutputTokens    int64   `json:"total_output_tokens"`
	Duration             float64 `json:"duration"`
	RequestThroughput    float64 `json:"request_throughput"`
	RequestGoodput       float64 `json:"request_goodput"`
	OutputThroughput     float64 `json:"output_throughput"`
	TotalTokenThroughput float64 `json:"total_token_throughput"`

	MeanTTFTMs   float64 `json:"mean_ttft_ms"`
	MedianTTFTMs float64 `json:"median_ttft_ms"`
	StdTTFTMs    float64 `json:"std_ttft_ms"`
	P90TTFTMs    float64 `json:"p90_ttft_ms"`
	P99TTFTMs    float64 `json:"p99_ttft_ms"`

	MeanTPOTMs   float64 `json:"mean_tpot_ms"`
	MedianTPOTMs float64 `json:"median_tpot_ms"`
	StdTPOTMs    float64 `json:"std_tpot_ms"`
	P90TPOTMs    float64 `json:"p90_tpot_ms"`
	P99TPOTMs    float64 `json:"p99_tpot_ms"`

	MeanITLMs   float64 `json:"mean_itl_ms"`
	MedianITLMs float64 `json:"median_itl_ms"`
	StdITLMs    float64 `json:"std_itl_ms"`
	P90ITLMs    float64 `json:"p90_itl_ms"`
	P99ITLMs    float64 `json:"p99_itl_ms"`

	MeanE2ELMs   float64 `json:"mean_e2el_ms"`
	MedianE2ELMs float64 `json:"median_e2el_ms"`
	StdE2ELMs    float64 `json:"std_e2el_ms"`
	P90E2ELMs    float64 `json:"p90_e2el_ms"`
	P99E2ELMs    float64 `json:"p99_e2el_ms"`

	// PrefixCacheHitRate is hits over queries in prompt tokens, as vLLM's
	// prefix_cache_hits / prefix_cache_queries.
	PrefixCacheHitRate float64 `json:"prefix_cache_hit_rate"`
	// Preemptions is the engines' total of vllm:num_preemptions.
	Preemptions int64 `json:"preemptions"`
	// KVTiers, for a simulated cluster with KV-cache tiers below the accelerator, is each
	// tier's part in the prefix cache, the accelerator's ("GPU") first.
	KVTiers []KVTierSummary `json:"kv_tiers,omitempty"`
	// Cost is what the run's GPUs cost, where a simulated cluster knows their prices; a
	// measured run leaves it out.
	Cost *Cost `json:"cost,omitempty"`
	// Disaggregation is set for a simulated prefill/decode-disaggregated cluster.
	Disaggregation *Disaggregation `json:"disaggregation,omitempty"`
	// Autoscale is set for an autoscaled cluster: its size over the run (Cost then bills
	// the instances only while they were started).
	Autoscale *Autoscale `json:"autoscale,omitempty"`
	// Classes breaks the run down by request class (the records' objective, GIE's
	// InferenceObjective name), when any record has one: each class's requests, failures
	// (flow control's 429s and 503s included), throughputs over the whole run's duration,
	// goodput and latencies. ITL is not broken down (the collector keeps inter-token gaps
	// in one histogram), nor are the engine counters.
	Classes map[string]Summary `json:"classes,omitempty"`
	// Arms, when the router split traffic between two routing policies (an A/B test), is
	// each arm's summary by its name (serving.ArmA, ArmB): see Arms.
	Arms map[string]*Summary `json:"arms,omitempty"`
}

// Disaggregation summarises prefill/decode disaggregation over a run.
type Disaggregation struct {
	// Requests is how many requests the pd decider sent to a prefill instance.
	Requests int64 `json:"disaggregated_requests"`
	// MeanKVTransfer is the mean time their prompts' KV took over the link, in seconds.
	MeanKVTransfer float64 `json:"mean_kv_transfer_s"`
	// Link names the link preset.
	Link string `json:"kv_link"`
}

// KVTierSummary is one KV-cache tier's counters over a run, summed over instances.
type KVTierSummary struct {
	// Medium is the tier's name in KV events (vLLM's medium): GPU, CPU or DISK.
	Medium string `json:"medium"`
	// PrefixCacheHitRate is the prompt tokens found on this tier over all prompt tokens
	// looked up (prefix_cache_queries); the tiers' rates add up to prefix_cache_hit_rate.
	PrefixCacheHitRate float64 `json:"prefix_cache_hit_rate"`
	// HitBlocks is the prompt blocks found on the tier.
	HitBlocks int64 `json:"hit_blocks"`
	// OffloadedBlocks is the blocks stored into the tier from the one above (0 for the
	// GPU), LoadedBlocks those loaded back from it to the GPU.
	OffloadedBlocks int64 `json:"offloaded_blocks"`
	LoadedBlocks    int64 `json:"loaded_blocks"`
	// LoadSeconds is the time those loads took: what the simulator charged its steps, or
	// what the real engine measured (servelab:kv_tier_load_seconds).
	LoadSeconds float64 `json:"load_s,omitempty"`
}

// Cost is what a run's GPUs cost over its duration.
type Cost struct {
	// GPUHours is instances x GPUs per instance (tensor-parallel size) x duration, summed
	// over the cluster's pools.
	GPUHours float64 `json:"gpu_hours"`
	// USD is GPUHours priced at each pool's GPU price per hour, in US dollars.
	USD float64 `json:"cost_usd"`
	// GoodputPerDollar is the requests that met the SLO (all completed ones when there is
	// none, as request_goodput counts them) per dollar; 0 when the run cost nothing.
	GoodputPerDollar float64 `json:"goodput_per_dollar"`
}

// EngineCounters are the engine-side counters a summary reports.
type EngineCounters struct {
	PrefixCacheQueries, PrefixCacheHits, Preemptions int64
}

// Sub is c minus an earlier reading: the counts in between.
func (c EngineCounters) Sub(earlier EngineCounters) EngineCounters {
	return EngineCounters{
		PrefixCacheQueries: c.PrefixCacheQueries - earlier.PrefixCacheQueries,
		PrefixCacheHits:    c.PrefixCacheHits - earlier.PrefixCacheHits,
		Preemptions:        c.Preemptions - earlier.Preemptions,
	}
}

// Collector accumulates records and inter-token latencies as a run produces them.
type Collector struct {
	slo                 SLO
	ttft, tpot, e2el    []float64
	itl                 histogram
	completed, failed   int
	good                int
	inputTokens, output int64
	// classes collects each objective's records when records have one; a class's own
	// collector has inClass set and no classes.
	classes map[string]*Collector
	inClass bool
}

// NewCollector returns a collector that judges goodput against slo.
func NewCollector(slo SLO) *Collector { return &Collector{slo: slo} }

// Add takes one record.
func (c *Collector) Add(r *serving.Record) {
	if r.Objective != "" && !c.inClass {
		k := c.classes[r.Objective]
		if k == nil {
			if c.classes == nil {
				c.classes = map[string]*Collector{}
			}
			k = &Collector{slo: c.slo, inClass: true}
			c.classes[r.Objective] = k
		}
		k.Add(r)
	}
	if r.Failed {
		c.failed++
		return
	}
	c.completed++
	c.inputTokens += int64(r.PromptTokens)
	c.output += int64(r.OutputTokens)
	c.ttft = append(c.ttft, r.TTFT())
	c.e2el = append(c.e2el, r.E2E())
	if tpot, ok := r.TPOT(); ok {
		c.tpot = append(c.tpot, tpot)
	}
	if c.slo.Met(r) {
		c.good++
	}
}

// Good is the number of requests that met the SLO so far.
func (c *Collector) Good() int { return c.good }

// AddITL takes one inter-token latency in seconds. ITLs are kept in a histogram (see
// histogram for its precision): a long run has hundreds of millions of them.
func (c *Collector) AddITL(seconds float64) { c.itl.add(seconds, 1) }

// Summary computes the summary of a run that lasted duration seconds.
func (c *Collector) Summary(duration float64, eng EngineCounters) Summary {
	s := Summary{
		Completed:         c.completed,
		Failed:            c.failed,
		TotalInputTokens:  c.inputTokens,
		TotalOutputTokens: c.output,
		Duration:          duration,
		Preemptions:       eng.Preemptions,
	}
	if duration > 0 {
		s.RequestThroughput = float64(c.completed) / duration
		s.RequestGoodput = float64(c.good) / duration
		s.OutputThroughput = float64(c.output) / duration
		s.TotalTokenThroughput = float64(c.inputTokens+c.output) / duration
	}
	if eng.PrefixCacheQueries > 0 {
		s.PrefixCacheHitRate = float64(eng.PrefixCacheHits) / float64(eng.PrefixCacheQueries)
	}
	s.MeanTTFTMs, s.MedianTTFTMs, s.StdTTFTMs, s.P90TTFTMs, s.P99TTFTMs = describe(c.ttft)
	s.MeanTPOTMs, s.MedianTPOTMs, s.StdTPOTMs, s.P90TPOTMs, s.P99TPOTMs = describe(c.tpot)
	s.MeanE2ELMs, s.MedianE2ELMs, s.StdE2ELMs, s.P90E2ELMs, s.P99E2ELMs = describe(c.e2el)
	s.MeanITLMs, s.MedianITLMs, s.StdITLMs, s.P90ITLMs, s.P99ITLMs = c.itl.describe()
	if len(c.classes) > 0 {
		s.Classes = make(map[string]Summary, len(c.classes))
		for name, k := range c.classes {
			s.Classes[name] = k.Summary(duration, EngineCounters{})
		}
	}
	return s
}

// describe returns mean, median, population standard deviation (numpy's default, as vLLM
// uses), p90 and p99 of x in milliseconds.
func describe(x []float64) (mean, median, std, p90, p99 float64) {
	if len(x) == 0 {
		return 0, 0, 0, 0, 0
	}
	x = slices.Clone(x)
	slices.Sort(x)
	mean, std = stat.PopMeanStdDev(x, nil)
	ms := func(v float64) float64 { return v * 1000 }
	return ms(mean), ms(Percentile(x, 50)), ms(std), ms(Percentile(x, 90)), ms(Percentile(x, 99))
}

// Percentile is numpy.percentile's default (linear interpolation between closest ranks)
// over sorted values x.
func Percentile(x []float64, p float64) float64 {
	if len(x) == 0 {
		return 0
	}
	rank := p / 100 * float64(len(x)-1)
	lo := int(math.Floor(rank))
	hi := min(lo+1, len(x)-1)
	return x[lo] + (x[hi]-x[lo])*(rank-float64(lo))
}
