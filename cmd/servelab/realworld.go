package main

import (
	"context"
	"io"
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
		router:  routerFlags{spec: rc.Cell.Router, scrape: router.DefaultScrapeInterval, kvEvents: true, seed: rc.Cell.Seed},
	}
	realWorldObjectives(&c.router, rc)
	// What the spec leaves out, the engines take from the simulator's defaults, as the
	// simulator's cells do: one default for both worlds.
	def := sim.DefaultClusterSpec()
	c.prefixCaching = def.EnablePrefixCaching
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
	maxLen, vocab, err := modelLimits(c.model, c.maxModelLen)
	if err != nil {
		return nil, err
	}
	log := io.Discard
	if w.verbose {
		log = w.log
	}
	opts, err := c.options(log)
	if err != nil {
		return nil, err
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
	if serr := cl.Stop(15 * time.Second); err == nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	return &res.Summary, nil
}
