package engine

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/engine/kv"
)

// The engine's KV tiers (Config.KVTiers, Config.KVMover): a cached block evicted from the
// accelerator is offloaded to the first tier below it instead of dropped, and a prefix hit
// on a lower tier is loaded back into a fresh block. The block manager decides and
// KVMover copies the contents, from inside the scheduler's allocations: a load completes
// before the step that reads the block runs, and its time is part of that step (the
// synchronous load that the simulator charges; vLLM's OffloadingConnector loads
// asynchronously and parks the request meanwhile).

func (c *Config) checkTiers() error {
	switch {
	case len(c.KVTiers) == 0:
		if c.KVMover != nil {
			return errors.New("engine: a KV mover without KV tiers")
		}
	case c.KVMover == nil:
		return errors.New("engine: KV tiers need a KV mover to copy the blocks' contents")
	case !c.EnablePrefixCaching:
		return errors.New("engine: KV tiers need prefix caching: only cached prefix blocks are offloaded")
	}
	return nil
}

func tierStats(m *kv.Manager) []kv.TierStats {
	if m.NumTiers() == 1 {
		return nil
	}
	return m.TierStats()
}

// kvLoadBuckets are per-block load times: host-memory copies take microseconds, disk reads
// up to milliseconds on a busy device.
var kvLoadBuckets = []float64{1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}

// bindTiers registers the per-tier metrics, labelled by the tier's medium (vLLM's KV
// events' medium: GPU, CPU, DISK), when the engine has tiers.
func (m *Metrics) bindTiers(e *Engine) {
	if len(e.cfg.KVTiers) == 0 {
		return
	}
	mediums := []string{kv.MediumGPU}
	for _, t := range e.cfg.KVTiers {
		mediums = append(mediums, t.Medium)
	}
	for i, medium := range mediums {
		labels := prometheus.Labels{"medium": medium}
		for k, v := range m.labels {
			labels[k] = v
		}
		stat := func(f func(kv.TierStats) int64) func() float64 {
			return func() float64 {
				if st := e.Stats().KVTiers; i < len(st) {
					return float64(f(st[i]))
				}
				return 0
			}
		}
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "servelab:kv_tier_blocks",
			Help: "Capacity of each KV cache tier in blocks (GPU: the accelerator's blocks).", ConstLabels: labels},
			stat(func(s kv.TierStats) int64 { return int64(s.Blocks) })))
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "servelab:kv_tier_hit_blocks_total",
			Help: "Prompt blocks that prefix-cache hits found on each KV cache tier (below the GPU: loaded back).", ConstLabels: labels},
			stat(func(s kv.TierStats) int64 { return s.HitBlocks })))
		if i == 0 {
			continue
		}
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "servelab:kv_tier_offloaded_blocks_total",
			Help: "Blocks offloaded into each KV cache tier from the tier above.", ConstLabels: labels},
			stat(func(s kv.TierStats) int64 { return s.Offloaded })))
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "servelab:kv_tier_loaded_blocks_total",
			Help: "Blocks loaded back to the GPU tier from each lower KV cache tier.", ConstLabels: labels},
			stat(func(s kv.TierStats) int64 { return s.Loaded })))
	}
	m.kvLoad = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "servelab:kv_tier_load_seconds",
		Help:    "Time to load one KV block back to the GPU tier from a lower tier (reading the tier and writing the block), measured.",
		Buckets: kvLoadBuckets, ConstLabels: m.labels}, []string{"medium"})
	m.reg.MustRegister(m.kvLoad)
	for _, medium := range mediums[1:] {
		m.kvLoad.WithLabelValues(medium)
	}
}

// ObserveKVLoad records one block's load time from the tier of the given medium (a
// kvoffload.Mover's OnLoad). It is a no-op before the engine is built or without tiers.
func (m *Metrics) ObserveKVLoad(medium string, seconds float64) {
	if m.kvLoad != nil {
		m.kvLoad.WithLabelValues(medium).Observe(seconds)
	}
}
