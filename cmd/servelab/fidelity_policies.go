package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"

	"servelab/policies"
	"servelab/serving"
	"servelab/sim"
)

// defaultOneEngineBatches are the batch policies `fidelity --engines 1` compares when no
// --batch is given: the engine's default, vLLM v1's continuous batching; static batching,
// which admits a batch only once the previous one has finished (on the shipped Azure
// slice's first 200 requests, tiny model, load 0.7, its mean TTFT measured 312 ms against
// vllm's 64); and vllm with an eighth of the step budget (vLLM's
// --max-num-batched-tokens 256 of 2,048), which prefills the long prompts in chunks (65 of
// the shipped Mooncake slice's 200 fill the tiny model's 512-token context). The others
// would not differ on these traces: under the default budget chunked_prefill=false never
// binds below a 2,048-token context, and `priority` admits in arrival order when no request
// carries a priority (the shipped Azure and Mooncake traces do not), as vllm does; only its
// preemption victim can differ.
var defaultOneEngineBatches = []string{"vllm", "static", "vllm:max_num_batched_tokens=256"}

// fidelityConfig is one configuration fidelity compares: a router in front of engines
// running one batch and one evict policy.
type fidelityConfig struct {
	Router string
	Batch  string // the spec as given (--batch)
	Evict  string // the spec as given (--evict)
	// Label names the configuration in the table and the rankings: the parts that vary
	// between the compared configurations.
	Label string
	// Engine is what each engine of the configuration runs, fully resolved
	// (fidelityEngineConfig): the simulator runs it and every started engine must report it.
	Engine serving.EngineConfig
}

// policyList is a repeatable --batch or --evict: fidelity replaces the single-valued flag
// clusterFlags registers (up and the others keep theirs) with one that collects every value.
type policyList struct {
	values *[]string
}

func (p *policyList) Set(v string) error {
	*p.values = append(*p.values, v)
	return nil
}

func (p *policyList) String() string { return "[" + strings.Join(*p.values, ",") + "]" }

func (p *policyList) Type() string { return "stringArray" }

// fidelityPolicies are fidelity's repeatable --batch and --evict.
type fidelityPolicies struct {
	batches, evicts []string
}

// register turns the --batch and --evict flags clusterFlags.register added into
// repeatable ones.
func (p *fidelityPolicies) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	b, e := fl.Lookup("batch"), fl.Lookup("evict")
	b.Value, b.DefValue = &policyList{&p.batches}, ""
	b.Usage = "batch policy spec of every engine; repeat to compare batch policies (default vllm; with --engines 1: " +
		strings.Join(defaultOneEngineBatches, ", ") + ")"
	e.Value, e.DefValue = &policyList{&p.evicts}, ""
	e.Usage = "KV eviction policy spec of every engine; repeat to compare eviction policies (default lru)"
}

// compared lists the configurations to compare: every router with every batch policy
// with every evict policy, in the order given (the first is the one profiled, calibrated
// on and whose capacity sets the load). Each policy spec is checked here, before the
// profile.
func (p *fidelityPolicies) compared(c *clusterFlags, routers []string) ([]fidelityConfig, error) {
	batches, evicts := p.batches, p.evicts
	if len(batches) == 0 {
		batches = []string{"vllm"}
		if c.engines == 1 {
			batches = defaultOneEngineBatches
		}
	}
	if len(evicts) == 0 {
		evicts = []string{"lru"}
	}
	for _, list := range []struct {
		flag   string
		values []string
	}{{"--batch", batches}, {"--evict", evicts}} {
		seen := map[string]bool{}
		for _, v := range list.values {
			if seen[v] {
				return nil, fmt.Errorf("%s %q given twice", list.flag, v)
			}
			seen[v] = true
		}
	}
	var out []fidelityConfig
	for _, r := range routers {
		for _, b := range batches {
			for _, e := range evicts {
				// Resolving against a placeholder checks the specs; the real base is the
				// profile's (fidelityEngineConfig again, once it is known).
				if _, err := fidelityEngineConfig(c, serving.EngineConfig{}, b, e); err != nil {
					return nil, err
				}
				var parts []string
				if len(routers) > 1 || len(batches) == 1 && len(evicts) == 1 {
					parts = append(parts, r)
				}
				if len(batches) > 1 {
					parts = append(parts, b)
				}
				if len(evicts) > 1 {
					parts = append(parts, "evict "+e)
				}
				out = append(out, fidelityConfig{Router: r, Batch: b, Evict: e, Label: strings.Join(parts, " ")})
			}
		}
	}
	return out, nil
}

// fidelityEngineConfig is the configuration an engine of cluster c started with --batch
// batchSpec and --evict evictSpec runs: base, the profiled engine's resolved configuration
// (its KV blocks, block size, context, prefix caching, which the policies do not change),
// with the batch and evict specs the engine resolves from those flags, built by the
// engine's own code (engineFlags.policies, with c's --max-num-seqs and
// --max-num-batched-tokens folded in and the engine's policies.Env). The simulator of a
// fidelity run and the check of its engines (checkRunEngines) both take it from here.
func fidelityEngineConfig(c *clusterFlags, base serving.EngineConfig, batchSpec, evictSpec string) (serving.EngineConfig, error) {
	ef := c.engineFlags()
	ef.batchSpec, ef.evictSpec = batchSpec, evictSpec
	bp, ev, err := ef.policies()
	if err != nil {
		return serving.EngineConfig{}, err
	}
	base.Batch, base.Evict = bp.Spec().String(), ev.Spec().String()
	// The engines run with c's --kv-tier (the profiled one ran without).
	tiers, err := sim.ResolveKVTiers(c.kvTiers, func(int) policies.Env { return policies.Env{BlockSize: base.BlockSize} })
	if err != nil {
		return serving.EngineConfig{}, fmt.Errorf("--kv-tier: %w", err)
	}
	if base.KVTiers, err = sim.ResolvedKVTiers(tiers, 0); err != nil {
		return serving.EngineConfig{}, fmt.Errorf("--kv-tier: %w", err)
	}
	return base, nil
}

// resolveCompared sets each configuration's engine configuration from the profiled one.
func resolveCompared(c *clusterFlags, base serving.EngineConfig, configs []fidelityConfig) error {
	for i := range configs {
		ec, err := fidelityEngineConfig(c, base, configs[i].Batch, configs[i].Evict)
		if err != nil {
			return err
		}
		configs[i].Engine = ec
	}
	return nil
}

// withPolicies is c starting cfg's cluster: its router, batch and evict policies.
func (cfg *fidelityConfig) withPolicies(c clusterFlags) clusterFlags {
	c.router.spec, c.batch, c.evict = cfg.Router, cfg.Batch, cfg.Evict
	return c
}

// checkRunEngines asks every engine for its resolved configuration (GET /server_info),
// returns what they reported and refuses a run in which one differs from want, the
// configuration the simulator runs.
func checkRunEngines(ctx context.Context, endpoints []string, want serving.EngineConfig) ([]serving.EngineConfig, error) {
	var got []serving.EngineConfig
	for i, ep := range endpoints {
		ec, err := fetchEngineConfig(ctx, ep)
		if err != nil {
			return nil, fmt.Errorf("engine %d: %w", i, err)
		}
		if diff := cmp.Diff(want, ec); diff != "" {
			return nil, fmt.Errorf("engine %d (%s) does not run the configuration the simulator runs (-simulated +engine):\n%s", i, ep, diff)
		}
		got = append(got, ec)
	}
	return got, nil
}
