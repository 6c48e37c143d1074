package main

import (
	"fmt"
	"io"
	"strings"

	"servelab/metrics"
	"servelab/real/local"
	"servelab/sim"
)

// Fidelity of a disaggregated cluster and of a tiered KV cache: --prefill-engines starts
// prefill engines beside the --engines decode engines, behind the router in P/D mode, and
// the simulator runs the same cluster as a prefill pool and a decode pool of the profiled
// engine, its KV moving over --kv-link; --kv-tier gives every engine and every simulated
// instance the same tiers. The compared numbers include, in each world, the requests
// disaggregated and their KV transfer's mean time, and each tier's hit rate.

// parsePDTiers checks --prefill-engines, --kv-link and --kv-tier before anything runs.
func (f *fidelityFlags) parsePDTiers() error {
	c := &f.cluster
	if c.prefillEngines < 0 {
		return fmt.Errorf("--prefill-engines must be 0 or more, got %d", c.prefillEngines)
	}
	if c.prefillEngines > 0 {
		if _, err := sim.LookupLink(c.kvLink); err != nil {
			return fmt.Errorf("--kv-link: %w", err)
		}
	}
	c.kvTiers = nil
	for _, arg := range f.kvTiers {
		t, err := sim.ParseKVTier(arg)
		if err != nil {
			return fmt.Errorf("--kv-tier: %w", err)
		}
		switch {
		case t.Medium != "cpu" && t.Medium != "disk":
			return fmt.Errorf("--kv-tier %q: unknown medium %q (want cpu or disk)", arg, t.Medium)
		case t.Blocks <= 0:
			return fmt.Errorf("--kv-tier %q: blocks must be positive", arg)
		}
		if t.Preset == "" {
			t.Preset = localTierPreset[t.Medium]
		}
		c.kvTiers = append(c.kvTiers, t)
	}
	if len(c.kvTiers) > 0 && !c.prefixCaching {
		return fmt.Errorf("--kv-tier needs --enable-prefix-caching: tiers hold cached prefix blocks")
	}
	return nil
}

// localTierPreset is the simulator's tier preset fidelity charges by default: this
// machine's, as measured (sim.KVTierPresets), not a GPU server's.
var localTierPreset = map[string]string{"cpu": "local-cpu", "disk": "local-disk"}

// pdTiersSimSpec makes spec (one pool of c.engines instances) c's cluster: a prefill and a
// decode pool when c has prefill engines, in the order the real engines are started (the
// prefill engines first), over c's KV link, and every instance with c's KV tiers.
func pdTiersSimSpec(spec *sim.ClusterSpec, c *clusterFlags) {
	if c.prefillEngines > 0 {
		spec.UsePools([]sim.PoolSpec{
			{Name: "prefill", Role: sim.RolePrefill, Instances: c.prefillEngines},
			{Name: "decode", Role: sim.RoleDecode, Instances: c.engines},
		})
		spec.KVLink = c.kvLink
	}
	spec.KVTiers = c.kvTiers
}

// addEngineArgs adds flags for engine i after those opts already gives it (its --role).
func addEngineArgs(opts *local.Options, more func(i int) []string) {
	prev := opts.EngineArgsFor
	opts.EngineArgsFor = func(i int) []string {
		var args []string
		if prev != nil {
			args = append(args, prev(i)...)
		}
		return append(args, more(i)...)
	}
}

// printPDTiers prints a run's disaggregation and tier rows, each world's mean over its
// repeats, when either world reports them.
func printPDTiers(w io.Writer, run *fidelityRun) {
	type world struct {
		disagg, transferMs float64
		tiers              map[string]*metrics.KVTierSummary
		order              []string
		n                  int
	}
	mean := func(get func(*fidelityRepeat) metrics.Summary) world {
		var out world
		out.tiers = map[string]*metrics.KVTierSummary{}
		for i := range run.Repeats {
			s := get(&run.Repeats[i])
			if d := s.Disaggregation; d != nil {
				out.disagg += float64(d.Requests)
				out.transferMs += 1e3 * d.MeanKVTransfer
				out.n++
			}
			for _, t := range s.KVTiers {
				m := out.tiers[t.Medium]
				if m == nil {
					m = &metrics.KVTierSummary{Medium: t.Medium}
					out.tiers[t.Medium] = m
					out.order = append(out.order, t.Medium)
				}
				m.PrefixCacheHitRate += t.PrefixCacheHitRate / float64(len(run.Repeats))
				m.LoadedBlocks += t.LoadedBlocks
				m.OffloadedBlocks += t.OffloadedBlocks
				m.LoadSeconds += t.LoadSeconds
			}
		}
		if out.n > 0 {
			out.disagg /= float64(out.n)
			out.transferMs /= float64(out.n)
		}
		return out
	}
	p := mean(func(r *fidelityRepeat) metrics.Summary { return r.Predicted })
	m := mean(func(r *fidelityRepeat) metrics.Summary { return r.Measured })
	if p.n > 0 || m.n > 0 {
		fmt.Fprintf(w, "%-28s %10.1f %7s %10.1f %7s %9s\n", "Disaggregated requests", p.disagg, "", m.disagg, "", relError(p.disagg, m.disagg))
		fmt.Fprintf(w, "%-28s %10.3f %7s %10.3f %7s %9s\n", "Mean KV transfer (ms)", p.transferMs, "", m.transferMs, "", relError(p.transferMs, m.transferMs))
	}
	order := p.order
	for _, med := range m.order {
		if p.tiers[med] == nil {
			order = append(order, med)
		}
	}
	for _, med := range order {
		pt, mt := p.tiers[med], m.tiers[med]
		if pt == nil {
			pt = &metrics.KVTierSummary{}
		}
		if mt == nil {
			mt = &metrics.KVTierSummary{}
		}
		name := "Hit rate " + strings.ToUpper(med) + " tier (%)"
		fmt.Fprintf(w, "%-28s %10.2f %7s %10.2f %7s %9s\n", name, 100*pt.PrefixCacheHitRate, "", 100*mt.PrefixCacheHitRate, "",
			fmt.Sprintf("%+.1fpt", 100*(pt.PrefixCacheHitRate-mt.PrefixCacheHitRate)))
		if med != "GPU" {
			fmt.Fprintf(w, "%-28s %10d %7s %10d   (all repeats)\n", "  blocks offloaded to it", pt.OffloadedBlocks, "", mt.OffloadedBlocks)
			fmt.Fprintf(w, "%-28s %10d %7s %10d   (all repeats)\n", "  blocks loaded from it", pt.LoadedBlocks, "", mt.LoadedBlocks)
			perBlock := func(t *metrics.KVTierSummary) float64 {
				if t.LoadedBlocks == 0 {
					return 0
				}
				return 1e6 * t.LoadSeconds / float64(t.LoadedBlocks)
			}
			fmt.Fprintf(w, "%-28s %10.1f %7s %10.1f %7s %9s\n", "  load per block (us)", perBlock(pt), "", perBlock(mt), "", relError(perBlock(pt), perBlock(mt)))
		}
	}
}
