package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/route"
	"servelab/policies/scale"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
	"servelab/traces"
)

// simFlags are the flags of a simulated run, shared by sim and compare.
type simFlags struct {
	cluster     sim.ClusterSpec
	trace       string
	format      string
	rateScale   float64
	maxRequests int
	goodput     []string
	// tokenScale and outputScale are --token-scale and --output-token-scale as given
	// ("1", "0.25", "auto"); scales are what they resolved to in the last simulate, and
	// shaped what scaling did to its rows.
	tokenScale, outputScale string
	scales                  tokenScales
	shaped                  sliceShape
	// pools and prices are --pool and --gpu-price as given.
	pools  []string
	prices []string
	// kvTiers is --kv-tier as given.
	kvTiers []string
	// nonCachedTokens is --non-cached-tokens, applied only when given.
	nonCachedTokens int
	// scaleLog is --scale-log.
	scaleLog string
}

func (f *simFlags) register(cmd *cobra.Command) {
	f.cluster = sim.DefaultClusterSpec()
	fl := cmd.Flags()
	fl.StringVar(&f.trace, "trace", "", "trace file to replay (required)")
	fl.StringVar(&f.format, "format", "", "trace format: azure, mooncake, burstgpt or native (guessed from the file when empty)")
	fl.Float64Var(&f.rateScale, "rate-scale", 1, "multiply the trace's arrival rate (arrival times are divided by it)")
	fl.IntVar(&f.maxRequests, "max-requests", 0, "replay at most this many requests (0: all)")
	fl.StringVar(&f.tokenScale, "token-scale", "1", tokenScaleHelp)
	fl.StringVar(&f.outputScale, "output-token-scale", "auto", outputTokenScaleHelp)
	fl.IntVar(&f.cluster.Instances, "instances", f.cluster.Instances, "number of engine instances")
	fl.StringVar(&f.cluster.Batch, "batch", f.cluster.Batch, "batch policy spec (policies listed above)")
	fl.StringVar(&f.cluster.Evict, "evict", f.cluster.Evict, "eviction policy spec (policies listed above)")
	fl.StringVar(&f.cluster.Model, "model", f.cluster.Model, "model: "+strings.Join(latency.ModelNames(), ", ")+", or a Hugging Face config.json")
	fl.StringVar(&f.cluster.GPU, "gpu", f.cluster.GPU, "GPU: "+strings.Join(latency.GPUNames(), ", "))
	fl.IntVar(&f.cluster.TP, "tp", f.cluster.TP, "tensor-parallel size of each instance")
	fl.StringVar(&f.cluster.Latency, "latency", f.cluster.Latency, "step-time model: roofline[:mfu=,bandwidth_efficiency=,overhead_ms=,...], profile:FILE (a profile of the real engine, whose recorded configuration then decides batch, evict, KV cache and context) or linear:FILE (a profile's step times alone, or bare coefficients)")
	fl.IntVar(&f.cluster.BlockSize, "block-size", f.cluster.BlockSize, "KV block size in tokens")
	fl.IntVar(&f.cluster.NumGPUBlocksOverride, "num-gpu-blocks-override", 0, "KV blocks per instance, overriding the latency model's memory budget")
	fl.Float64Var(&f.cluster.GPUMemoryUtilization, "gpu-memory-utilization", f.cluster.GPUMemoryUtilization, "fraction of GPU memory for weights, activations and KV cache")
	fl.BoolVar(&f.cluster.EnablePrefixCaching, "enable-prefix-caching", f.cluster.EnablePrefixCaching, "reuse cached KV blocks of shared prefixes")
	fl.IntVar(&f.cluster.MaxModelLen, "max-model-len", 0, "longest prompt plus output served (0: the model's max_position_embeddings)")
	fl.Uint64Var(&f.cluster.Seed, "seed", 0, "seed of every policy's random source")
	fl.Var(secondsFlag{&f.cluster.ScrapeInterval}, "scrape-interval", "route on the instances' gauges as of the router's last read, this often (servelab router's and llm-d's); 0 reads them at every arrival")
	fl.Var(secondsFlag{&f.cluster.KVEventDelay}, "kv-event-delay", "route on prefix caches as the router's KV-event index sees them: a step's cached and evicted blocks reach it this long after the step ends (servelab router's, measured on loopback); 0 reads each instance's live cache. Only the precise prefix-cache scorer reads it")
	fl.StringSliceVar(&f.goodput, "goodput", nil, "SLOs for goodput in ms, as vLLM's: ttft:MS,tpot:MS,e2el:MS")
	fl.StringArrayVar(&f.kvTiers, "kv-tier", nil, "a KV-cache tier below the GPU, MEDIUM:BLOCKS[:EVICT[:PRESET]] per instance, top down (repeat: --kv-tier cpu:100000 --kv-tier disk:1000000:s3fifo): evicted blocks offload to it and prefix hits on it load back at the preset's bandwidth and latency. MEDIUM is cpu or disk; EVICT any policy above (lru); PRESET "+kvTierPresetHelp())
	fl.StringArrayVar(&f.pools, "pool", nil, "a pool of the cluster, NAME:ROLE:INSTANCES:GPU[:TP] (repeat for several; replaces --instances, --gpu and --tp). ROLE is both, prefill or decode; a prefill pool makes the cluster prefill/decode-disaggregated (llm-d's pd-profile-handler: --router picks the decode instance, --prefill-router the prefill one, or --router names a P/D EndpointPickerConfig with both profiles)")
	fl.StringVar(&f.cluster.Autoscale, "autoscale", "", "scaling policy spec (policies listed above, e.g. hpa:metric=queue,target=4,max-replicas=8): start and drain instances by it, from min-replicas (replaces --instances)")
	fl.StringVar(&f.scaleLog, "scale-log", "", "with --autoscale: write every scaling decision to this file as JSON lines (the format servelab up --scale-log writes)")
	fl.Float64Var(&f.cluster.ScaleUpDelay, "scale-up-delay", 0, "with --autoscale: seconds from a scale-up decision until the new instance takes requests (the model load time)")
	fl.StringVar(&f.cluster.PrefillRouter, "prefill-router", "", "with a prefill pool: routing policy spec of the prefill pool (llm-d's prefill profile); empty: the same spec as --router")
	fl.IntVar(&f.nonCachedTokens, "non-cached-tokens", 16, "with a prefill pool: llm-d's prefix-based-pd-decider threshold: disaggregate a request only when at least this many prompt tokens are uncached on its decode instance (0: every request)")
	fl.StringVar(&f.cluster.KVLink, "kv-link", "", "with a prefill pool: the link prompt KV crosses from prefill to decode: nvlink (450 GB/s, 2 us), rdma (50 GB/s, 5 us) or tcp (10 GB/s, 50 us); nominal defaults, empty: rdma")
	fl.StringVar(&f.cluster.FlowControl, "flow-control", "", flowControlUsage)
	fl.Var(objectivesFlag{&f.cluster.Objectives}, "objective", objectiveUsage)
	fl.StringSliceVar(&f.prices, "gpu-price", nil, "US dollars per GPU-hour for the cost report, GPU=USD (repeat or comma-separate), overriding the defaults (typical on-demand cloud prices, not facts): "+gpuPriceDefaults())
}

// gpuPriceDefaults lists the default GPU prices for --help.
func gpuPriceDefaults() string {
	var b strings.Builder
	for i, name := range latency.GPUNames() {
		g, _ := latency.LookupGPU(name)
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%g", name, g.PricePerHour)
	}
	return b.String()
}

// kvTierPresetHelp lists the KV-tier link presets for --help.
func kvTierPresetHelp() string {
	names := make([]string, 0, len(sim.KVTierPresets))
	for n := range sim.KVTierPresets {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	for i, n := range names {
		p := sim.KVTierPresets[n]
		if i > 0 {
			b.WriteString("; ")
		}
		what := "defaults, not measurements"
		if p.Measured {
			what = "measured"
		}
		fmt.Fprintf(&b, "%s = %g GB/s, %g us", n, p.BandwidthGBps, p.LatencyUs)
		if p.BlockLatencyUs > 0 {
			fmt.Fprintf(&b, " + %g us a block", p.BlockLatencyUs)
		}
		fmt.Fprintf(&b, " (%s: %s)", what, p.Description)
	}
	return b.String() + "; cpu defaults to pcie-gen5, disk to nvme"
}

// applyCluster turns --pool, --kv-tier and --gpu-price into the cluster spec: a --pool
// with --instances, --gpu or --tp besides is an error.
func (f *simFlags) applyCluster(fl *pflag.FlagSet) error {
	for _, s := range f.kvTiers {
		t, err := sim.ParseKVTier(s)
		if err != nil {
			return fmt.Errorf("--kv-tier: %w", err)
		}
		f.cluster.KVTiers = append(f.cluster.KVTiers, t)
	}
	for _, kv := range f.prices {
		name, v, ok := strings.Cut(kv, "=")
		usd, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if !ok || err != nil {
			return fmt.Errorf("--gpu-price %q: want GPU=USD, e.g. a100-80g=1.3", kv)
		}
		if f.cluster.GPUPricePerHour == nil {
			f.cluster.GPUPricePerHour = map[string]float64{}
		}
		f.cluster.GPUPricePerHour[strings.ToLower(strings.TrimSpace(name))] = usd
	}
	if fl.Changed("non-cached-tokens") {
		n := f.nonCachedTokens
		f.cluster.NonCachedTokens = &n
	}
	if len(f.pools) == 0 {
		return nil
	}
	for _, name := range []string{"instances", "gpu", "tp"} {
		if fl.Changed(name) {
			return fmt.Errorf("--%s: given with --pool; each pool gives its instances, GPU and tp", name)
		}
	}
	var pools []sim.PoolSpec
	for _, s := range f.pools {
		p, err := sim.ParsePool(s)
		if err != nil {
			return fmt.Errorf("--pool: %w", err)
		}
		pools = append(pools, p)
	}
	f.cluster.UsePools(pools)
	return nil
}

// profileEngineFlags are sim's flags that the engine configuration a profile records
// decides.
var profileEngineFlags = []string{"batch", "evict", "block-size", "num-gpu-blocks-override", "max-model-len", "enable-prefix-caching"}

// useProfileEngine applies --pool and --gpu-price (applyCluster), then makes a simulation with --latency profile:FILE run the profiled
// engine's resolved configuration (its batch and evict specs with every parameter, KV
// blocks, block size, context, prefix caching) instead of the simulator's defaults, whose
// GPU class picks other batch limits. Setting one of those flags besides is an error:
// --latency linear:FILE takes the profile's step times without its configuration.
func (f *simFlags) useProfileEngine(fl *pflag.FlagSet, warn io.Writer) error {
	if err := f.applyCluster(fl); err != nil {
		return err
	}
	if file, ok := strings.CutPrefix(f.cluster.Latency, "linear:"); ok {
		f.warnLinearDiffers(file, warn)
		return nil
	}
	file, ok := strings.CutPrefix(f.cluster.Latency, "profile:")
	if !ok {
		return nil
	}
	p, err := latency.LoadProfile(file)
	if err != nil {
		return err
	}
	if err := f.useProfileGPU(fl, file, p, warn); err != nil {
		return err
	}
	if p.Engine == nil {
		fmt.Fprintf(warn, "warning: %s does not record the engine's resolved configuration; batch limits, KV cache and context come from flags and defaults (profile again to record it)\n", file)
		return nil
	}
	for _, name := range profileEngineFlags {
		if fl.Changed(name) {
			return fmt.Errorf("--%s: --latency profile:%s runs the profiled engine's configuration (batch %s, evict %s, %d KV blocks of %d, max model len %d, prefix caching %t); to simulate other settings with its step times use --latency linear:%s",
				name, file, p.Engine.Batch, p.Engine.Evict, p.Engine.NumGPUBlocks, p.Engine.BlockSize, p.Engine.MaxModelLen, p.Engine.EnablePrefixCaching, file)
		}
	}
	if len(p.Engine.KVTiers) > 0 && fl.Changed("kv-tier") {
		return fmt.Errorf("--kv-tier: --latency profile:%s runs the profiled engine's KV tiers (%+v); to simulate other tiers with its step times use --latency linear:%s",
			file, p.Engine.KVTiers, file)
	}
	f.cluster.UseEngine(*p.Engine)
	return nil
}

// useProfileGPU makes a simulation of a profile measured on a GPU (its "gpu") run that
// GPU: the default --gpu becomes the profile's, which prices the run and picks the GPU
// class; a --gpu or --pool GPU other than the profile's is an error naming both, as its
// step times are the profiled GPU's. A CPU profile (no "gpu") runs with --gpu as given,
// with a warning when --gpu is given: it prices the run, the step times stay the CPU's.
func (f *simFlags) useProfileGPU(fl *pflag.FlagSet, file string, p *latency.Profile, warn io.Writer) error {
	if p.GPU == "" {
		if fl.Changed("gpu") {
			fmt.Fprintf(warn, "warning: %s was not measured on a GPU (%s): --gpu %s prices the run and sets its GPU class, the step times are the profile's\n",
				file, p.Machine, f.cluster.GPU)
		}
		return nil
	}
	if len(f.cluster.Pools) > 0 {
		for _, pool := range f.cluster.Pools {
			if !strings.EqualFold(pool.GPU, p.GPU) {
				return fmt.Errorf("--pool %s: GPU %s, but --latency profile:%s was measured on %s (%s); its step times are %s's: give the pool GPU %s, or simulate %s with --latency roofline",
					pool.Name, pool.GPU, file, p.GPU, p.Machine, p.GPU, p.GPU, pool.GPU)
			}
		}
		return nil
	}
	if fl.Changed("gpu") && !strings.EqualFold(f.cluster.GPU, p.GPU) {
		return fmt.Errorf("--gpu %s: --latency profile:%s was measured on %s (%s); its step times are %s's, which --gpu %s would price and schedule as another GPU: leave --gpu out (or give --gpu %s), or simulate %s with --latency roofline",
			f.cluster.GPU, file, p.GPU, p.Machine, p.GPU, f.cluster.GPU, p.GPU, f.cluster.GPU)
	}
	f.cluster.GPU = p.GPU
	return nil
}

// warnLinearDiffers warns when --latency linear:FILE takes a profile's step times for a
// batch policy other than the one the profiled engine ran: a what-if, or the simulator's
// defaults (--gpu h100) standing in for the engine's limits by mistake.
func (f *simFlags) warnLinearDiffers(file string, warn io.Writer) {
	p, err := latency.LoadProfile(file)
	if err != nil || p.Engine == nil {
		return // bare coefficients, or an error Build reports
	}
	spec, err := policies.ParseSpec(f.cluster.Batch)
	if err != nil {
		return
	}
	bp, err := batch.Registry.Build(spec, policies.Env{BlockSize: f.cluster.BlockSize, GPUClass: latency.GPUClass(f.cluster.GPU)})
	if err != nil {
		return
	}
	if got := bp.Spec().String(); got != p.Engine.Batch {
		fmt.Fprintf(warn, "warning: the simulation runs batch %s (--batch, --gpu %s), the profiled engine ran %s; --latency profile:%s runs the engine's\n",
			got, f.cluster.GPU, p.Engine.Batch, file)
	}
}

// policyHelp lists every policy with its parameters, for the commands' long help.
func policyHelp() string {
	return "Routing policies (--router; also an llm-d EndpointPickerConfig YAML file):\n" + route.Registry.Help() +
		"\nBatch policies (--batch):\n" + batch.Registry.Help() +
		"\nEviction policies (--evict):\n" + evict.Registry.Help() +
		"\nScaling policies (--autoscale):\n" + scale.Registry.Help() +
		"\nA spec is NAME or NAME:key=value,key=value, e.g. weighted:prefix=3,queue=1,kv=1\n"
}

// openTrace opens the trace with the requested scaling and limit.
func (f *simFlags) openTrace() (traces.Reader, io.Closer, error) {
	if f.trace == "" {
		return nil, nil, fmt.Errorf("--trace is required")
	}
	if !(f.rateScale > 0) || math.IsInf(f.rateScale, 0) {
		return nil, nil, fmt.Errorf("--rate-scale must be positive, got %g", f.rateScale)
	}
	r, c, err := traces.Open(f.trace, traces.Format(f.format))
	if err != nil {
		return nil, nil, err
	}
	if f.rateScale != 1 {
		r = traces.ScaleRate(r, f.rateScale)
	}
	if f.maxRequests > 0 {
		r = traces.Limit(r, f.maxRequests)
	}
	return r, c, nil
}

// secondsFlag is a duration flag ("50ms") stored as seconds, the simulator's unit.
type secondsFlag struct{ p *float64 }

func (s secondsFlag) String() string {
	if s.p == nil {
		return "0s"
	}
	return time.Duration(*s.p * float64(time.Second)).String()
}

func (s secondsFlag) Set(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return err
	}
	if d < 0 {
		return fmt.Errorf("must not be negative, got %v", d)
	}
	*s.p = d.Seconds()
	return nil
}

func (secondsFlag) Type() string { return "duration" }

// simulate runs the flags' trace on cluster.
func (f *simFlags) simulate(cluster sim.ClusterSpec, onRecord func(*serving.Record) error) (sim.Result, error) {
	slo, err := metrics.ParseSLO(f.goodput...)
	if err != nil {
		return sim.Result{}, err
	}
	cfg, err := cluster.Build(slo)
	if err != nil {
		return sim.Result{}, err
	}
	cfg.OnRecord = onRecord
	if f.scaleLog != "" {
		if cfg.Autoscale == nil {
			return sim.Result{}, fmt.Errorf("--scale-log: set without --autoscale")
		}
		l, err := openScaleLog(f.scaleLog)
		if err != nil {
			return sim.Result{}, err
		}
		defer l.Close()
		cfg.Autoscale.OnDecision = l.write
	}
	// The context --token-scale auto fits is the cluster's max_model_len, as bench's is
	// the served model's.
	scales, err := f.benchTokenScale(f.tokenScale, f.outputScale, cfg.MaxModelLen, cfg.BlockSize)
	if err != nil {
		return sim.Result{}, err
	}
	f.scales = scales
	src, closer, err := f.openTrace()
	if err != nil {
		return sim.Result{}, err
	}
	defer closer.Close()
	src, shaped := scales.apply(src)
	res, err := sim.Run(cfg, src)
	f.shaped = shaped()
	return res, err
}

func newSimCmd() *cobra.Command {
	var f simFlags
	var out string
	var asJSON, allowFailures bool
	cmd := &cobra.Command{
		Use:   "sim --trace FILE [flags]",
		Short: "Simulate a serving cluster on a trace and print vLLM-style benchmark metrics",
		Long: "Simulate a serving cluster replaying a trace: each instance runs the engine's real scheduler,\n" +
			"KV block manager and policies, with a latency model in place of the GPU.\n\n" + abFlagsHelp + "\n\n" + policyHelp(),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var records *recordWriter
			if out != "" {
				var err error
				if records, err = newRecordWriter(out); err != nil {
					return err
				}
			}
			var onRecord func(*serving.Record) error
			if records != nil {
				onRecord = records.write
			}
			if err := f.useProfileEngine(cmd.Flags(), cmd.ErrOrStderr()); err != nil {
				return err
			}
			res, err := f.simulate(f.cluster, onRecord)
			if records != nil {
				if cerr := records.close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				return err
			}
			if f.scales != (tokenScales{Input: 1, Output: 1}) {
				fmt.Fprintf(cmd.ErrOrStderr(), "servelab sim: token scale %.4g, output token scale %.4g: %s\n", f.scales.Input, f.scales.Output, f.shaped)
			}
			if out != "" {
				if err := writeRunDir(out, f, res.Summary); err != nil {
					return err
				}
			}
			if asJSON {
				err = writeJSON(cmd.OutOrStdout(), res.Summary)
			} else {
				printSummary(cmd.OutOrStdout(), f.cluster.Router, res.Summary, res.Steps, "")
				printArms(cmd.OutOrStdout(), res.Summary, armSpecs(f.cluster.Router, f.cluster.ABRouter), "")
			}
			if err != nil {
				return err
			}
			reportFailures(cmd.ErrOrStderr(), res.Failures, int(res.Requests), simHint)
			if n := res.Failures.Total(); n > 0 && !allowFailures {
				return fmt.Errorf("%d of %d requests failed (--allow-failures accepts a run with failures)", n, res.Requests)
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&allowFailures, "allow-failures", false, "exit 0 even when requests failed")
	cmd.Flags().StringVar(&f.cluster.Router, "router", f.cluster.Router, "routing policy spec, or an EndpointPickerConfig YAML file (policies listed above); with a prefill pool, an llm-d P/D EndpointPickerConfig (pd-profile-handler with decode and prefill profiles) replaces --prefill-router and --non-cached-tokens, the same file 'servelab router' takes")
	cmd.Flags().StringVar(&f.cluster.ABRouter, "ab-router", "", "A/B test: route --ab-fraction of the requests (arm b) with this routing policy spec or EndpointPickerConfig file, the rest (arm a) with --router; the summary adds each arm's")
	cmd.Flags().Float64Var(&f.cluster.ABFraction, "ab-fraction", 0, "with --ab-router: the share of requests in arm b, 0 to 1, split by a hash of --seed and the request id as servelab router splits them")
	cmd.Flags().StringVar(&out, "out", "", "also write summary.json, records.jsonl and config.json to this directory")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the summary as JSON")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeRunDir writes a run's summary and the configuration it ran with.
func writeRunDir(dir string, f simFlags, s metrics.Summary) error {
	config := struct {
		Trace       string          `json:"trace"`
		Format      string          `json:"format,omitempty"`
		RateScale   float64         `json:"rate_scale"`
		MaxRequests int             `json:"max_requests,omitempty"`
		Goodput     []string        `json:"goodput,omitempty"`
		TokenScale  float64         `json:"token_scale"`
		OutputScale float64         `json:"output_token_scale"`
		Shape       sliceShape      `json:"slice_shape"`
		Cluster     sim.ClusterSpec `json:"cluster"`
	}{f.trace, f.format, f.rateScale, f.maxRequests, f.goodput, f.scales.Input, f.scales.Output, f.shaped, f.cluster}
	for name, v := range map[string]any{"summary.json": s, "config.json": config} {
		file, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		err = writeJSON(file, v)
		if cerr := file.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// recordWriter streams per-request records as JSON lines.
type recordWriter struct {
	file *os.File
	buf  *bufio.Writer
	enc  *json.Encoder
}

func newRecordWriter(dir string) (*recordWriter, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	file, err := os.Create(filepath.Join(dir, "records.jsonl"))
	if err != nil {
		return nil, err
	}
	buf := bufio.NewWriterSize(file, 1<<20)
	return &recordWriter{file: file, buf: buf, enc: json.NewEncoder(buf)}, nil
}

func (w *recordWriter) write(r *serving.Record) error { return w.enc.Encode(r) }

func (w *recordWriter) close() error {
	err := w.buf.Flush()
	if cerr := w.file.Close(); err == nil {
		err = cerr
	}
	return err
}

// printSummary prints a run as vLLM's benchmark does; steps < 0 leaves out the simulated
// step count.
// hitRate, when not empty, replaces the prefix-cache hit rate (one nobody measured).
func printSummary(w io.Writer, title string, s metrics.Summary, steps int64, hitRate string) {
	line := func(name string, v any) { fmt.Fprintf(w, "%-40s %v\n", name+":", v) }
	num := func(name string, v float64) { fmt.Fprintf(w, "%-40s %.2f\n", name+":", v) }
	fmt.Fprintf(w, "%s\n", center(" Serving Benchmark Result ("+title+") ", 60, '='))
	line("Successful requests", s.Completed)
	line("Failed requests", s.Failed)
	num("Benchmark duration (s)", s.Duration)
	line("Total input tokens", s.TotalInputTokens)
	line("Total generated tokens", s.TotalOutputTokens)
	num("Request throughput (req/s)", s.RequestThroughput)
	num("Request goodput (req/s)", s.RequestGoodput)
	num("Output token throughput (tok/s)", s.OutputThroughput)
	num("Total Token throughput (tok/s)", s.TotalTokenThroughput)
	for _, m := range []struct {
		title, name                 string
		mean, median, p90, p99, std float64
	}{
		{"Time to First Token", "TTFT", s.MeanTTFTMs, s.MedianTTFTMs, s.P90TTFTMs, s.P99TTFTMs, s.StdTTFTMs},
		{"Time per Output Token (excl. 1st token)", "TPOT", s.MeanTPOTMs, s.MedianTPOTMs, s.P90TPOTMs, s.P99TPOTMs, s.StdTPOTMs},
		{"Inter-token Latency", "ITL", s.MeanITLMs, s.MedianITLMs, s.P90ITLMs, s.P99ITLMs, s.StdITLMs},
		{"End-to-end Latency", "E2EL", s.MeanE2ELMs, s.MedianE2ELMs, s.P90E2ELMs, s.P99E2ELMs, s.StdE2ELMs},
	} {
		fmt.Fprintf(w, "%s\n", center(m.title, 60, '-'))
		num("Mean "+m.name+" (ms)", m.mean)
		num("Median "+m.name+" (ms)", m.median)
		num("P90 "+m.name+" (ms)", m.p90)
		num("P99 "+m.name+" (ms)", m.p99)
	}
	fmt.Fprintf(w, "%s\n", center("Engine", 60, '-'))
	if hitRate != "" {
		line("Prefix cache hit rate (%)", hitRate)
	} else {
		num("Prefix cache hit rate (%)", s.PrefixCacheHitRate*100)
	}
	for _, t := range s.KVTiers {
		num("  hit rate on "+t.Medium+" (%)", t.PrefixCacheHitRate*100)
		if t.Medium != "GPU" {
			line("  blocks offloaded to "+t.Medium, t.OffloadedBlocks)
			line("  blocks loaded from "+t.Medium, t.LoadedBlocks)
		}
	}
	line("Preemptions", s.Preemptions)
	if steps >= 0 {
		line("Engine steps simulated", steps)
	}
	if a := s.Autoscale; a != nil {
		fmt.Fprintf(w, "%s\n", center("Autoscaling", 60, '-'))
		fmt.Fprintf(w, "%-40s %s\n", "Policy:", a.Policy)
		fmt.Fprintf(w, "%-40s %.2f\n", "Mean instances:", a.MeanInstances)
		fmt.Fprintf(w, "%-40s %d\n", "Max instances:", a.MaxInstances)
		fmt.Fprintf(w, "%-40s %d / %d\n", "Scale-ups / scale-downs:", a.ScaleUps, a.ScaleDowns)
		fmt.Fprintf(w, "%-40s %.4f\n", "Instance-hours:", a.InstanceHours)
	}
	if c := s.Cost; c != nil {
		fmt.Fprintf(w, "%s\n", center("Cost", 60, '-'))
		fmt.Fprintf(w, "%-40s %.4f\n", "GPU-hours:", c.GPUHours)
		fmt.Fprintf(w, "%-40s %.4f\n", "Cost (USD):", c.USD)
		num("Goodput per dollar (req/USD)", c.GoodputPerDollar)
	}
	if d := s.Disaggregation; d != nil {
		fmt.Fprintf(w, "%s\n", center("Prefill/decode disaggregation", 60, '-'))
		line("Disaggregated requests", int(d.Requests))
		num("Mean KV transfer (ms, "+d.Link+")", d.MeanKVTransfer*1000)
	}
	printClasses(w, s)
	fmt.Fprintf(w, "%s\n", strings.Repeat("=", 60))
}

func center(s string, width int, pad rune) string {
	if len(s) >= width {
		return s
	}
	left := (width - len(s)) / 2
	return strings.Repeat(string(pad), left) + s + strings.Repeat(string(pad), width-len(s)-left)
}
