package main

import (
	"context"
	"io"
	"os"
	"strconv"
	"time"

	"servelab/experiments"
	"servelab/metrics"
	"servelab/real/bench"
	"servelab/real/local"
	"servelab/real/router"
	"servelab/sim"
	"servelab/traces"
)

// localWorld runs an experiment's cells on a local cluster, as `servelab up` starts one,
// and replays each cell's workload against it, as `servelab bench` does.
type localWorld struct {
	log     io.Writer // engines' output, with --verbose
	verbose bool
}

func (w localWorld) RunCell(ctx context.Context, rc experiments.RealCell) (*metrics.Summary, error) {
	k := rc.Spec.Cluster
	c := clusterFlags{
		engines: k.Instances, model: rc.Spec.ModelPath(), batch: rc.Cell.Batch, evict: rc.Cell.Evict,
		blockSize: k.BlockSize, numBlocks: k.NumGPUBlocksOverride, maxModelLen: k.MaxModelLen,
		verbose: w.verbose,
		router:  routerFlags{spec: rc.Spec.PolicyPath(rc.Cell.Router), scrape: router.DefaultScrapeInterval, kvEvents: true, seed: rc.Cell.Seed},
	}
	realWorldObjectives(&c.router, rc)
	// What the spec leaves out, the engines take from the simulator's defaults, as the
	// simulator's cells do: one default for both worlds.
	def := sim.DefaultClusterSpec()
	c.prefixCaching = def.EnablePrefixCaching
	// Pools: an engine per instance, with its pool's role below (in the spec's order, as
	// the simulator numbers its instances).
	for _, p := range k.Pools {
		c.engines += p.Instances
	}
	if c.engines == 0 {
		c.engines = def.Instances
	}
	if c.blockSize == 0 {
		c.blockSize = def.BlockSize
	}
	if k.EnablePrefixCaching != nil {
		c.prefixCaching = *k.EnablePrefixCaching
	}
	if k.ScrapeInterval != nil {
		c.router.scrape = time.Duration(*k.ScrapeInterval * float64(time.Second))
	}
	c.router.flow.spec = k.FlowControl
	// An A/B test: the router splits as the simulator's cells do (the cell's seed, the
	// trace row index bench sends as x-request-id), and bench's summary has the arms.
	if k.ABRouter != "" && k.ABFraction != nil {
		c.router.abSpec, c.router.abFraction = rc.Spec.PolicyPath(k.ABRouter), *k.ABFraction
	}
	for name, p := range k.Objectives {
		c.router.flow.objectives = append(c.router.flow.objectives, name+"="+strconv.Itoa(p))
	}
	maxLen, vocab, err := modelLimits(c.model, c.maxModelLen)
	if err != nil {
		return nil, err
	}
	// KV tiers: every engine gets the spec's tiers (the simulator's parser reads them
	// again), a disk tier's file in a directory that goes with the cell.
	if c.kvTiers = k.KVTiers; len(k.KVTiers) > 0 {
		dir, err := os.MkdirTemp("", "servelab-kv-tiers-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		c.kvTierDir = dir
	}
	log := io.Discard
	if w.verbose {
		log = w.log
	}
	opts, err := c.options(log)
	if err != nil {
		return nil, err
	}
	// A prefill pool: the engines run their roles and the router llm-d's P/D decision as the
	// simulator's disaggregation builds it, from the same spec (experiments.Spec.PDProfile).
	roles := rc.Spec.RealRoles()
	if roles != nil {
		pd, err := rc.Spec.PDProfile(rc.Cell, c.blockSize)
		if err != nil {
			return nil, err
		}
		opts.Router.Policy, opts.Roles = pd, roles
	}
	if roles != nil {
		opts.EngineArgsFor = func(i int) []string { return []string{"--role", roles[i]} }
	}
	cl, err := local.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	metricsURLs := make([]string, len(cl.Endpoints))
	for i, ep := range cl.Endpoints {
		metricsURLs[i] = ep + "/metrics"
	}
	res, err := bench.Run(ctx, bench.Options{
		Endpoint: cl.URL, Trace: traces.FitContext(rc.Workload, maxLen), VocabSize: vocab, Seed: rc.Cell.Seed,
		SLO:         rc.Spec.SLO.Metrics(),
		MetricsURLs: metricsURLs, OnRecord: rc.OnRecord,
		SampleInterval: time.Duration(rc.SampleInterval * float64(time.Second)),
		OnSample: func(s bench.Sample) error {
			return rc.OnSample(sim.Sample{
				Time: s.Elapsed, Running: s.Engines.Running, Waiting: s.Engines.Waiting,
				KVCacheUsage: s.Engines.KVCacheUsage, Completed: s.Completed, OutputTokens: s.OutputTokens,
				PrefixCacheQueries: s.Engines.Counters.PrefixCacheQueries, PrefixCacheHits: s.Engines.Counters.PrefixCacheHits,
			})
		},
	})
	if err == nil {
		// What the simulator's summary says of disaggregation and tiers, measured.
		err = addMeasuredPDTiers(ctx, cl.URL, cl.Endpoints, c.blockSize, roles != nil, len(k.KVTiers) > 0, &res.Summary)
	}
	if serr := cl.Stop(15 * time.Second); err == nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	return &res.Summary, nil
}
