package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/real/bench"
	"servelab/real/local"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
	"servelab/traces"
)

type fidelityFlags struct {
	cluster     clusterFlags
	routers     []string
	trace       string
	format      string
	maxRequests int
	tokenScale  string
	outputScale string
	load        float64
	rateScale   float64
	profile     string
	quick       bool
	calibrate   bool
	goodput     []string
	out         string
	asJSON      bool
	cpu         cpuFlags // fidelity_cpu.go
	routersSet  bool     // --router was given
	repeats     int
	explain     string

	// policies are the repeatable --batch and --evict (fidelity_policies.go).
	policies fidelityPolicies

	// capacityBurst and capacityRepeats measure the real cluster's capacity
	// (fidelity_load.go).
	capacityBurst   time.Duration
	capacityRepeats int

	// kvTiers are --kv-tier MEDIUM:BLOCKS[:EVICT[:PRESET]]: every engine's tiers, and the
	// simulator's with PRESET (default local-cpu / local-disk, this machine's measured
	// figures) (fidelity_pd.go).
	kvTiers []string
}

// fidelityRun is one router's predicted and measured summaries: the means over its
// repeats (fidelityRun.summarize), and each repeat's.
type fidelityRun struct {
	Router string `json:"router"`
	Batch  string `json:"batch"`
	Evict  string `json:"evict"`
	// Label names the run in the table and rankings: what varies between the compared runs.
	Label string `json:"label"`
	// Engine is the resolved configuration every engine of the run reported (GET
	// /server_info) and the simulator ran.
	Engine serving.EngineConfig `json:"engine"`
	// Predicted is the simulator on the measured arrivals, Scheduled on the scheduled ones
	// (fidelityRepeat).
	Predicted metrics.Summary  `json:"predicted"`
	Scheduled metrics.Summary  `json:"predicted_scheduled"`
	Measured  metrics.Summary  `json:"measured"`
	Failures  metrics.Failures `json:"failures,omitempty"`
	// StepTimeRatio is the engines' measured step time over what the simulator's latency
	// model gives for the same steps: how much of the error is the step-time model's.
	StepTimeRatio float64          `json:"measured_over_modelled_step_time"`
	Steps         int              `json:"engine_steps"`
	Repeats       []fidelityRepeat `json:"repeats"`
}

// fidelityReport is what `servelab fidelity --json` prints and --out writes.
type fidelityReport struct {
	Trace       string  `json:"trace"`
	Requests    int     `json:"requests"`
	TokenScale  float64 `json:"token_scale"`
	RateScale   float64 `json:"rate_scale"`
	CapacityRPS float64 `json:"simulated_capacity_rps"`
	Engines     int     `json:"engines"`
	Model       string  `json:"model"`
	Profile     string  `json:"profile"`
	// Calibrated is set when the simulator's step-time model was fitted to the engines' own
	// steps on the slice after the compared one (--calibrate).
	Calibrated        bool          `json:"calibrated"`
	CalibrationSteps  int           `json:"calibration_steps,omitempty"`
	CalibrationR2     float64       `json:"calibration_r2,omitempty"`
	ProfileStepsRatio float64       `json:"measured_over_profiled_step_time,omitempty"`
	Runs              []fidelityRun `json:"runs"`
	CPUs              *cpuSetup     `json:"cpu_setup,omitempty"`
	CalibrationCPU    []*runCPU     `json:"calibration_cpu,omitempty"`
	// Rankings compares every pair of routers, decided or within noise.
	Rankings []pairRanking `json:"rankings,omitempty"`

	// OutputTokenScale scales the outputs apart from the prompts (TokenScale); Shape counts
	// the rows clipped to the context and the outputs raised to 2 tokens.
	OutputTokenScale float64    `json:"output_token_scale"`
	Shape            sliceShape `json:"slice_shape"`
	// Capacity is the real cluster's, measured; --load is a fraction of it. OfferedRPS is
	// the rate the compared runs send at.
	Capacity   *measuredCapacity `json:"measured_capacity,omitempty"`
	OfferedRPS float64           `json:"offered_rps"`
}

func newFidelityCmd() *cobra.Command {
	var f fidelityFlags
	cmd := &cobra.Command{
		Use:   "fidelity --trace FILE --engines N --model DIR --router SPEC [--router SPEC ...]",
		Short: "Check the simulator against the real engines: predicted vs measured on the same trace slice",
		Long: `Profile the engine on this machine (or reuse --profile), then for each router (and each --batch
and --evict policy: see "One engine" below) run the simulator
calibrated by that profile and a real local cluster (N engine processes behind the router, as
'servelab up' starts them) on the same trace slice, replayed by 'servelab bench', and print
predicted vs measured TTFT, TPOT, ITL and E2E latency (p50, p90, p99), throughput and prefix-cache
hit rate with relative errors, and whether both worlds rank the routers the same.

The prediction compared is the simulator's on the measured arrivals: the load generator records
when it actually sent each request, and the simulator replays the slice (same token counts and
prefix hash ids) at those send times, so a late send is not counted as the simulator's error. The
prediction on the trace's scheduled arrivals, what 'servelab sim' predicts, is in the JSON
(predicted_scheduled) and its mean TTFT is printed beside the send lag. Requests sent within a
millisecond of each other can reach the router's policy in another order than they were sent;
the router says on each response when it decided (x-servelab-routed-at), and the simulator
replays the requests in that order (at the measured send times, in ascending order), so that a
policy with state (round-robin's turn, a prefix index) sees them as the real one did.

Each router runs --repeats times in each world, repeat k with seed --seed+k (the router's and the
policies' draws, the prompts' token contents) and the simulator on repeat k's measured arrivals.
The table gives each metric's mean over repeats and its spread, (max - min) / mean. Every pair of
routers is ranked by mean TTFT, TPOT and E2E latency: a ranking is decided only where the
predicted gap exceeds the noise (the largest spread of the pair's values in either world), and
then agrees only where the measured gap also exceeds it, in the same order. (On the scheduled
arrivals a round-robin simulation has no spread: nothing in it draws from the seed.)

--explain DIR writes both worlds' steps per engine in one format (real-engine-I.jsonl and
sim-instance-I.jsonl: start time since the run's start, seconds, the model's seconds, shape,
running, waiting and KV blocks in use after the step) and prints, for repeat 1, the first step
at which each engine's batch differs between the worlds and the p10/p50/p90 of the real steps'
time over the latency model's time for the same shape.

The slice is the trace's first --max-requests rows. Their prompt lengths are scaled by
--token-scale (auto: to fit the model's context; for traces with prefix hash ids, so each hash
block covers whole KV blocks, keeping the trace's block sharing), their output lengths apart by
--output-token-scale (auto: kept unless they would crowd the context), and requests are
clipped to the context; the report counts the clipped ones. The
arrival rate is scaled so the offered load is --load times the real cluster's capacity, measured
first on the slice's own requests (--capacity-repeats closed-loop bursts of --capacity-burst,
their median; the simulator's capacity is printed beside it), or by --rate-scale.

The simulator runs the engines' resolved configuration as the profile records it (batch and
evict policy specs with every parameter, block size, KV blocks, max model len, prefix caching),
never the simulator's defaults; every engine started is asked for its own (GET /server_info)
and the run stops if one differs.
` + fidelityCPUHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			f.routersSet = cmd.Flags().Changed("router")
			rep, err := f.run(ctx, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if f.out != "" {
				if err := writeJSONFile(filepath.Join(f.out, "fidelity.json"), rep); err != nil {
					return err
				}
			}
			if f.asJSON {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			printFidelity(cmd.OutOrStdout(), rep)
			return nil
		},
	}
	f.cluster.register(cmd)
	f.policies.register(cmd)
	f.cpu.register(cmd, &f.cluster)
	fl := cmd.Flags()
	fl.StringArrayVar(&f.routers, "router", []string{"round-robin", "least-request", "prefix-affinity"}, "routing policy spec; repeat to compare routers")
	fl.StringVar(&f.trace, "trace", "", "trace file (required)")
	fl.StringVar(&f.format, "format", "", "trace format (guessed when empty)")
	fl.IntVar(&f.maxRequests, "max-requests", 300, "replay the trace's first N requests")
	fl.StringVar(&f.tokenScale, "token-scale", "auto", tokenScaleHelp)
	fl.StringVar(&f.outputScale, "output-token-scale", "auto", outputTokenScaleHelp)
	fl.Float64Var(&f.load, "load", 0.7, "offered load as a fraction of the real cluster's measured capacity (ignored with --rate-scale)")
	fl.DurationVar(&f.capacityBurst, "capacity-burst", 2*time.Second, "measure the real cluster's capacity with closed-loop bursts of the slice's requests this long (0: take the simulator's)")
	fl.IntVar(&f.capacityRepeats, "capacity-repeats", 5, "capacity bursts; their median is the capacity")
	fl.Float64Var(&f.rateScale, "rate-scale", 0, "multiply the trace's arrival rate by this instead of choosing it by --load")
	fl.StringVar(&f.profile, "profile", "", "reuse this engine profile (servelab profile) instead of measuring one")
	fl.BoolVar(&f.quick, "quick", false, "profile a small grid of step shapes")
	fl.BoolVar(&f.calibrate, "calibrate", true, "fit the step-time model to the engines' own steps, logged while a cluster of each compared configuration (up to three) replays the next --max-requests rows, before predicting")
	fl.StringSliceVar(&f.goodput, "goodput", nil, "SLOs for goodput in ms: ttft:MS,tpot:MS,e2el:MS")
	fl.StringVar(&f.out, "out", "", "write fidelity.json, the profile and each run's records to this directory")
	fl.BoolVar(&f.asJSON, "json", false, "print the report as JSON")
	fl.IntVar(&f.repeats, "repeats", 2, "run each router this many times in each world (seeds --seed, --seed+1, ...) to measure the run-to-run spread")
	fl.StringVar(&f.explain, "explain", "", "write both worlds' step logs to this directory and print where their schedules first diverge")
	fl.IntVar(&f.cluster.prefillEngines, "prefill-engines", 0, "also start this many engines with --role prefill (the --engines ones get --role decode) behind the router in P/D mode (--router must be a P/D EndpointPickerConfig, e.g. examples/router/llm-d-pd.yaml), and simulate the same disaggregated cluster over --kv-link")
	fl.StringVar(&f.cluster.kvLink, "kv-link", "local", "with --prefill-engines: the simulator's KV link preset (local: this machine's loopback HTTP pull, measured; nvlink, rdma, tcp)")
	fl.StringArrayVar(&f.kvTiers, "kv-tier", nil, "a KV-cache tier below every engine's blocks and every simulated instance's, MEDIUM:BLOCKS[:EVICT[:PRESET]] (repeat, top down: --kv-tier cpu:64 --kv-tier disk:1024); the engines measure their loads, the simulator charges PRESET's (default local-cpu / local-disk: this machine's, measured); disk tiers' files go under --out")
	return cmd
}

func (f *fidelityFlags) run(ctx context.Context, log io.Writer) (*fidelityReport, error) {
	c := &f.cluster
	if c.model == "" || f.trace == "" {
		return nil, errors.New("--model and --trace are required")
	}
	if len(f.routers) == 0 {
		return nil, errors.New("give at least one --router")
	}
	// Every flag is checked before the minutes of profiling.
	if c.engines <= 0 {
		return nil, fmt.Errorf("--engines must be positive, got %d", c.engines)
	}
	if err := f.parsePDTiers(); err != nil {
		return nil, err
	}
	routers, err := oneEngineRouters(c.engines, f.routers, f.routersSet)
	if err != nil {
		return nil, err
	}
	f.routers = routers
	configs, err := f.policies.compared(c, routers)
	if err != nil {
		return nil, err
	}
	// The first configuration is the one profiled, calibrated on and measured for capacity.
	c.batch, c.evict = configs[0].Batch, configs[0].Evict
	cpus, err := f.cpu.setup(c)
	if err != nil {
		return nil, err
	}
	printCPUSetup(log, cpus)
	if f.maxRequests <= 0 {
		return nil, fmt.Errorf("--max-requests must be positive, got %d", f.maxRequests)
	}
	if f.repeats <= 0 {
		return nil, fmt.Errorf("--repeats must be positive, got %d", f.repeats)
	}
	if f.rateScale < 0 {
		return nil, fmt.Errorf("--rate-scale must be positive (or 0 to choose it by --load), got %g", f.rateScale)
	}
	if f.rateScale == 0 && f.load <= 0 {
		return nil, fmt.Errorf("--load must be positive, got %g", f.load)
	}
	if f.capacityBurst < 0 || f.capacityBurst > 0 && f.capacityRepeats <= 0 {
		return nil, fmt.Errorf("--capacity-burst must not be negative (got %s) and --capacity-repeats must be positive (got %d)", f.capacityBurst, f.capacityRepeats)
	}
	if f.tokenScale != "auto" {
		if _, err := resolveTokenScale(f.tokenScale, traces.Shape{}, 0, 0); err != nil {
			return nil, err
		}
	}
	if _, err := resolveOutputTokenScale(f.outputScale, traces.Shape{}, 1, 0); err != nil {
		return nil, err
	}
	for _, router := range f.routers {
		if _, err := route.Parse(router, policies.Env{Seed: c.router.seed, BlockSize: c.blockSize}); err != nil {
			return nil, fmt.Errorf("--router %q: %w", router, err)
		}
	}
	maxLen, vocab, err := modelLimits(c.model, c.maxModelLen)
	if err != nil {
		return nil, err
	}
	slo, err := metrics.ParseSLO(f.goodput...)
	if err != nil {
		return nil, err
	}
	out := f.out
	if out == "" {
		if out, err = os.MkdirTemp("", "servelab-fidelity-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(out)
	} else if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	if len(c.kvTiers) > 0 {
		// Every engine's disk tier file (unlinked at once by the engine) goes here.
		c.kvTierDir = filepath.Join(out, "kv-tiers")
		if err := os.MkdirAll(c.kvTierDir, 0o755); err != nil {
			return nil, err
		}
	}

	// The profile is measured as one engine of the cluster runs: same threads, blocks, limits.
	profilePath := f.profile
	if profilePath == "" {
		fmt.Fprintf(log, "profiling %s with %d threads (one engine's share) ...\n", c.model, c.threadsPerEngine())
		unpin, err := f.cpu.profiling(c)
		if err != nil {
			return nil, err
		}
		prof, err := measureProfile(c.engineFlags(), f.quick, 3, func(int, int) {})
		unpin()
		if err != nil {
			return nil, err
		}
		profilePath = filepath.Join(out, "profile.json")
		if err := prof.Write(profilePath); err != nil {
			return nil, err
		}
	}
	prof, err := latency.LoadProfile(profilePath)
	if err != nil {
		return nil, err
	}
	if c.numBlocks == 0 {
		c.numBlocks = prof.NumGPUBlocks
	}
	// The simulator runs the engine's resolved configuration as the profile recorded it,
	// never the simulator's defaults (whose GPU class would pick other batch limits); each
	// started engine is checked against it (checkEngines).
	if prof.Engine == nil {
		return nil, fmt.Errorf("%s does not record the engine's resolved configuration (\"engine\"); profile again with this servelab", profilePath)
	}
	// Each compared configuration runs the profiled engine with its own batch and evict
	// policies, resolved as an engine started with them resolves them.
	if err := resolveCompared(c, *prof.Engine, configs); err != nil {
		return nil, err
	}
	engineCfg := configs[0].Engine
	// The engines' context, which the KV cache may hold below the model's.
	maxLen = engineCfg.MaxModelLen

	scan, err := f.scanSlice()
	if err != nil {
		return nil, err
	}
	scales, shape, err := f.sliceScales(scan, maxLen, engineCfg.BlockSize)
	if err != nil {
		return nil, err
	}
	tokenScale := scales.Input
	sliceFrom := func(skip int, rateScale float64) (traces.Reader, io.Closer, error) {
		r, closer, err := traces.Open(f.trace, traces.Format(f.format))
		if err != nil {
			return nil, nil, err
		}
		if skip > 0 {
			r = traces.Skip(r, skip)
		}
		r, _ = scales.apply(traces.Limit(r, f.maxRequests))
		return traces.ScaleRate(r, rateScale), closer, nil
	}
	slice := func(rateScale float64) (traces.Reader, io.Closer, error) { return sliceFrom(0, rateScale) }
	// simulateOn runs the simulator of cfg with seed on src; onStep and onRecord may be nil.
	simulateOn := func(cfg *fidelityConfig, seed uint64, src traces.Reader, onStep func(sim.StepInfo) error, onRecord func(*serving.Record) error) (metrics.Summary, error) {
		spec := fidelitySimSpec(c, cfg.Router, profilePath, cfg.Engine)
		spec.Seed = seed
		sc, err := spec.Build(slo)
		if err != nil {
			return metrics.Summary{}, err
		}
		sc.OnStep, sc.OnRecord = onStep, onRecord
		res, err := sim.Run(sc, src)
		return res.Summary, err
	}
	simulateSeed := func(cfg *fidelityConfig, seed uint64, rateScale float64) (metrics.Summary, error) {
		src, closer, err := slice(rateScale)
		if err != nil {
			return metrics.Summary{}, err
		}
		defer closer.Close()
		return simulateOn(cfg, seed, src, nil, nil)
	}
	simulate := func(cfg *fidelityConfig, rateScale float64) (metrics.Summary, error) {
		return simulateSeed(cfg, c.router.seed, rateScale)
	}

	rep := &fidelityReport{Trace: f.trace, Requests: scan.Rows, TokenScale: tokenScale, OutputTokenScale: scales.Output, Shape: shape, Engines: c.total(),
		Model: c.model, Profile: profilePath, RateScale: f.rateScale, CPUs: cpus}
	// The offered load is --load times the capacity the simulator predicts: its throughput
	// when the whole slice arrives at once. It is chosen again after calibration, whose
	// model knows what the engines achieve on this machine.
	chooseRate := func(what string) error {
		burst, err := simulate(&configs[0], 1e9)
		if err != nil {
			return err
		}
		rep.CapacityRPS = burst.RequestThroughput
		if f.rateScale <= 0 {
			if f.load <= 0 {
				return fmt.Errorf("--load must be positive, got %g", f.load)
			}
			rep.RateScale = rateScaleFor(f.load, rep.offeredCapacity(), scan)
		}
		rep.OfferedRPS = offeredRPS(rep.RateScale, scan)
		fmt.Fprintf(log, "%s: %d requests, token scale %.4g/%.4g, rate scale %.4g (load %.2f; capacity %s, %.1f req/s simulated)\n",
			what, scan.Rows, tokenScale, scales.Output, rep.RateScale, f.load, measuredRPS(rep.Capacity), rep.CapacityRPS)
		return nil
	}
	// --load is a fraction of the real cluster's capacity, measured before anything else
	// runs on it.
	if f.rateScale <= 0 && f.capacityBurst > 0 {
		if err := f.cpu.waitIdle(ctx, cpus, log); err != nil {
			return nil, err
		}
		if rep.Capacity, err = f.measureCapacity(ctx, engineCfg, slice, vocab, log); err != nil {
			return nil, err
		}
	}
	if err := chooseRate("slice"); err != nil {
		return nil, err
	}

	// Calibration replays the slice after the compared one once per compared configuration
	// (at most three), at the compared runs' rate, and fits one model to all their steps:
	// each configuration's batches (a router that sends everything to one engine makes
	// batches of tens of sequences, round-robin of a few), so no compared run's steps lie
	// outside what the model was fitted to.
	if f.calibrate {
		calibrated, err := f.calibrateProfile(ctx, prof, calibrationConfigs(configs), sliceFrom, rep, vocab, slo, out, log)
		if err != nil {
			return nil, err
		}
		profilePath = filepath.Join(out, "profile-calibrated.json")
		if err := calibrated.Write(profilePath); err != nil {
			return nil, err
		}
		rep.Profile, rep.Calibrated = profilePath, true
		if err := chooseRate("calibrated"); err != nil {
			return nil, err
		}
	}

	// Each configuration's repeats in turn; repeat k runs both worlds with seed --seed+k.
	for _, job := range fidelityJobs(configs, f.repeats) {
		cfg, seed := &configs[job.config], c.router.seed+uint64(job.repeat)
		router := cfg.Label
		scheduled, err := simulateSeed(cfg, seed, rep.RateScale)
		if err != nil {
			return nil, fmt.Errorf("simulating %s: %w", router, err)
		}
		fmt.Fprintf(log, "%s, repeat %d of %d: starting %d engines ...\n", router, job.repeat+1, f.repeats, c.total())
		rf := cfg.withPolicies(*c)
		rf.router.seed = seed
		opts, err := rf.options(io.Discard)
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(out, "runs", dirName(router), fmt.Sprintf("repeat-%d", job.repeat+1))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		stepLog := func(i int) string { return filepath.Join(dir, fmt.Sprintf("steps-engine-%d.jsonl", i)) }
		addEngineArgs(&opts, func(i int) []string { return []string{"--step-log", stepLog(i)} })
		if err := f.cpu.waitIdle(ctx, cpus, log); err != nil {
			return nil, err
		}
		cl, err := local.Start(ctx, opts)
		if err != nil {
			return nil, err
		}
		reported, err := checkRunEngines(ctx, cl.Endpoints, cfg.Engine)
		if err != nil {
			cl.Stop(15 * time.Second)
			return nil, fmt.Errorf("%s: %w", router, err)
		}
		res, usage, err := f.replay(ctx, cl, slice, rep.RateScale, vocab, seed, slo, dir, log, cpus)
		if err == nil {
			err = addMeasuredPDTiers(ctx, cl.URL, cl.Endpoints, engineCfg.BlockSize, c.prefillEngines > 0, len(c.kvTiers) > 0, &res.Summary)
		}
		if lag, n, lerr := kvEventLag(ctx, cl.URL); lerr == nil && n > 0 {
			fmt.Fprintf(log, "%s: the router's KV events arrived %.2f ms after their step on average (%d batches); the simulator assumed %.2f ms\n",
				router, lag*1e3, n, fidelitySimSpec(c, cfg.Router, profilePath, cfg.Engine).KVEventDelay*1e3)
		}
		if serr := cl.Stop(15 * time.Second); err == nil {
			err = serr
		}
		if err != nil {
			return nil, fmt.Errorf("replaying against %s: %w", router, err)
		}
		run := fidelityRepeat{Seed: seed, Scheduled: scheduled, Measured: res.Summary, Failures: res.Failures, CPU: usage, ServerInfo: reported}
		model, err := latency.LoadLinear(profilePath)
		if err != nil {
			return nil, err
		}
		// Over all engines' steps together: an engine the router left idle has no steps
		// and must not pull the ratio down.
		var measuredSum, modelledSum float64
		for i := range c.total() {
			steps, err := readSteps(stepLog(i))
			if err != nil {
				return nil, err
			}
			for _, s := range steps {
				measuredSum += s.Seconds
				modelledSum += model.StepTime(s.Shape)
			}
			run.Steps += len(steps)
		}
		if modelledSum > 0 {
			run.StepTimeRatio = measuredSum / modelledSum
		}
		if err := f.predictMeasured(&run, cfg, res, slice, rep.RateScale, simulateOn, model, stepLog, job.repeat); err != nil {
			return nil, fmt.Errorf("%s: %w", router, err)
		}
		rep.addRepeat(cfg, run)
	}
	rep.Rankings = rankings(rep.Runs)
	return rep, nil
}

// calibrateProfile replays the slice after the compared one on a real cluster per
// configuration in configs, with every engine logging its steps, and refits the profile's
// coefficients to all those steps together: the step times the engines achieve sharing
// this machine with each other, the router and the load generator, which a profile of one
// engine alone overestimates, over the batch shapes every configuration makes.
func (f *fidelityFlags) calibrateProfile(ctx context.Context, prof *latency.Profile, configs []fidelityConfig,
	sliceFrom func(int, float64) (traces.Reader, io.Closer, error), rep *fidelityReport,
	vocab int, slo metrics.SLO, out string, log io.Writer) (*latency.Profile, error) {
	var samples []latency.Sample
	for k := range configs {
		cfg := &configs[k]
		c := cfg.withPolicies(f.cluster)
		opts, err := c.options(io.Discard)
		if err != nil {
			return nil, err
		}
		logs := filepath.Join(out, "calibration", dirName(cfg.Label))
		if err := os.MkdirAll(logs, 0o755); err != nil {
			return nil, err
		}
		stepLog := func(i int) string { return filepath.Join(logs, fmt.Sprintf("steps-engine-%d.jsonl", i)) }
		addEngineArgs(&opts, func(i int) []string { return []string{"--step-log", stepLog(i)} })
		fmt.Fprintf(log, "calibrating on %s: replaying requests %d-%d with step logs ...\n", cfg.Label, f.maxRequests, 2*f.maxRequests-1)
		if err := f.cpu.waitIdle(ctx, rep.CPUs, log); err != nil {
			return nil, err
		}
		cl, err := local.Start(ctx, opts)
		if err != nil {
			return nil, err
		}
		if err := checkEngines(ctx, cl.Endpoints, cfg.Engine); err != nil {
			cl.Stop(15 * time.Second)
			return nil, err
		}
		res, usage, err := f.replay(ctx, cl, func(rs float64) (traces.Reader, io.Closer, error) { return sliceFrom(f.maxRequests, rs) },
			rep.RateScale, vocab, c.router.seed, slo, filepath.Join(logs, "run"), log, rep.CPUs)
		rep.CalibrationCPU = append(rep.CalibrationCPU, usage)
		if serr := cl.Stop(15 * time.Second); err == nil {
			err = serr
		}
		if err != nil {
			return nil, fmt.Errorf("calibration run on %s: %w", cfg.Label, err)
		}
		if res.Summary.Completed == 0 {
			return nil, fmt.Errorf("calibration: the trace has no requests after the first %d; use --calibrate=false", f.maxRequests)
		}
		for i := range c.total() {
			s, err := readSteps(stepLog(i))
			if err != nil {
				return nil, err
			}
			samples = append(samples, s...)
		}
	}
	coef, r2, err := latency.FitLinear(samples)
	if err != nil {
		return nil, fmt.Errorf("calibration: fitting %d steps: %w", len(samples), err)
	}
	var measured, profiled float64
	old := latency.NewLinear(prof.Coefficients)
	for _, s := range samples {
		measured += s.Seconds
		profiled += old.StepTime(s.Shape)
	}
	cal := *prof
	fit := latency.Fit(coef, samples)
	cal.Coefficients, cal.R2, cal.Samples, cal.Fit = coef, r2, len(samples), &fit
	cal.MeanRelativeError = fit.MeanRelativeError
	cal.Points = nil // the grid's steps are not what the calibrated coefficients fit
	cal.Machine = prof.Machine + ", calibrated on the engines' own steps under load"
	rep.CalibrationSteps, rep.CalibrationR2 = len(samples), r2
	if profiled > 0 {
		rep.ProfileStepsRatio = measured / profiled
	}
	fmt.Fprintf(log, "calibration: the engines' steps took %.2fx what the profile predicts; refitted: %s\n",
		rep.ProfileStepsRatio, fit.String())
	return &cal, nil
}

// maxCalibrationConfigs bounds the calibration runs; the configurations compared first
// and last (round-robin and prefix-affinity by default: the smallest and the largest
// batches) and one between cover the range of batch shapes.
const maxCalibrationConfigs = 3

// calibrationConfigs are the compared configurations fidelity calibrates on: all of them,
// or the first, the middle and the last when there are more than maxCalibrationConfigs.
func calibrationConfigs(configs []fidelityConfig) []fidelityConfig {
	if len(configs) <= maxCalibrationConfigs {
		return configs
	}
	return []fidelityConfig{configs[0], configs[len(configs)/2], configs[len(configs)-1]}
}

// fidelitySimSpec is the simulated cluster fidelity compares with c's real one: the
// profile's step times, and every instance running engineCfg, the engines' resolved
// configuration, rather than any default of the simulator.
func fidelitySimSpec(c *clusterFlags, router, profilePath string, engineCfg serving.EngineConfig) sim.ClusterSpec {
	spec := sim.DefaultClusterSpec()
	spec.Instances, spec.Router = c.engines, router
	pdTiersSimSpec(&spec, c)
	spec.Model, spec.Latency = filepath.Join(c.model, "config.json"), "profile:"+profilePath
	spec.UseEngine(engineCfg)
	spec.Seed = c.router.seed
	// The router routes on gauges as of its last scrape; so does the simulator.
	spec.ScrapeInterval = c.router.scrape.Seconds()
	return spec
}

// checkEngines asks every engine for its resolved configuration (GET /server_info) and
// refuses a run in which one differs from want, the configuration the simulator runs.
func checkEngines(ctx context.Context, endpoints []string, want serving.EngineConfig) error {
	_, err := checkRunEngines(ctx, endpoints, want)
	return err
}

// fetchEngineConfig reads an engine's resolved configuration from its GET /server_info.
func fetchEngineConfig(ctx context.Context, endpoint string) (serving.EngineConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	url := strings.TrimSuffix(endpoint, "/") + "/server_info"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return serving.EngineConfig{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return serving.EngineConfig{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return serving.EngineConfig{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var info struct {
		Config *serving.EngineConfig `json:"servelab_config"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&info); err != nil {
		return serving.EngineConfig{}, fmt.Errorf("GET %s: %w", url, err)
	}
	if info.Config == nil {
		return serving.EngineConfig{}, fmt.Errorf("GET %s: no \"servelab_config\"", url)
	}
	if err := info.Config.Validate(); err != nil {
		return serving.EngineConfig{}, fmt.Errorf("GET %s: servelab_config: %w", url, err)
	}
	return *info.Config, nil
}

// readSteps reads a step log written by `servelab engine --step-log`.
func readSteps(path string) ([]latency.Sample, error) { return latency.LoadSamples(path) }

// replay runs the load generator on the slice against cl with prompts from seed, writing
// its records and summary to dir.
func (f *fidelityFlags) replay(ctx context.Context, cl *local.Cluster, slice func(float64) (traces.Reader, io.Closer, error),
	rateScale float64, vocab int, seed uint64, slo metrics.SLO, dir string, log io.Writer, cpus *cpuSetup) (bench.Result, *runCPU, error) {
	src, closer, err := slice(rateScale)
	if err != nil {
		return bench.Result{}, nil, err
	}
	defer closer.Close()
	records, err := newRecordWriter(dir)
	if err != nil {
		return bench.Result{}, nil, err
	}
	metricsURLs := make([]string, len(cl.Endpoints))
	for i, ep := range cl.Endpoints {
		metricsURLs[i] = ep + "/metrics"
	}
	var progress io.Writer
	if isTerminal(log) {
		progress = log
	}
	watch, err := f.cpu.watch(cpus, cl)
	if err != nil {
		return bench.Result{}, nil, err
	}
	res, err := bench.Run(ctx, bench.Options{
		Endpoint: cl.URL, Trace: src, VocabSize: vocab, Seed: seed, SLO: slo,
		MetricsURLs: metricsURLs, OnRecord: records.write, Progress: progress,
	})
	usage, werr := watch.finish()
	if err == nil {
		err = werr
	}
	if cerr := records.close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = writeJSONFile(filepath.Join(dir, "summary.json"), res.Summary)
	}
	return res, usage, err
}

func (f *fidelityFlags) scanSlice() (traces.Shape, error) {
	r, closer, err := traces.Open(f.trace, traces.Format(f.format))
	if err != nil {
		return traces.Shape{}, err
	}
	defer closer.Close()
	s, err := traces.ScanShape(traces.Limit(r, f.maxRequests))
	if err == nil && s.Rows == 0 {
		err = fmt.Errorf("%s: no requests", f.trace)
	}
	return s, err
}

func dirName(spec string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, spec)
}

func writeJSONFile(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	err = writeJSON(file, v)
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	return err
}

// printFidelity prints each router's predicted vs measured metrics and the rankings.
func printFidelity(w io.Writer, rep *fidelityReport) {
	fmt.Fprintf(w, "Fidelity: %s, first %d requests, token scale %.4g (prompts) / %.4g (outputs), rate scale %.4g, %d engines of %s\n",
		rep.Trace, rep.Requests, rep.TokenScale, rep.OutputTokenScale, rep.RateScale, rep.Engines, rep.Model)
	fmt.Fprintf(w, "Slice: %s\n", rep.Shape)
	fmt.Fprintf(w, "Capacity: %s, %.1f req/s simulated; load offered %.2f req/s\n",
		measuredRPS(rep.Capacity), rep.CapacityRPS, rep.OfferedRPS)
	printCPUSetup(w, rep.CPUs)
	if len(rep.Runs) > 0 {
		fmt.Fprintf(w, "Predicted: the simulator on the measured send times. Mean of %d repeats; spread = (max - min) / mean.\n",
			len(rep.Runs[0].Repeats))
	}
	for i := range rep.Runs {
		run := &rep.Runs[i]
		p, m := run.Predicted, run.Measured
		fmt.Fprintf(w, "\n%s\n", center(" "+run.Label+" ", 76, '='))
		fmt.Fprintf(w, "Router %s; engines run batch %s, evict %s (GET /server_info)\n", run.Router, run.Engine.Batch, run.Engine.Evict)
		fmt.Fprintf(w, "%-28s %10s %7s %10s %7s %9s\n", "metric", "predicted", "spread", "measured", "spread", "error")
		pct := func(v float64) string {
			if len(run.Repeats) < 2 {
				return "-"
			}
			return fmt.Sprintf("%.1f%%", 100*v)
		}
		row := func(name string, get func(*metrics.Summary) float64) {
			pv, mv := get(&p), get(&m)
			fmt.Fprintf(w, "%-28s %10.2f %7s %10.2f %7s %9s\n", name, pv, pct(spread(worldValues(run, true, get))),
				mv, pct(spread(worldValues(run, false, get))), relError(pv, mv))
		}
		for _, m3 := range []struct {
			name                string
			mean, p50, p90, p99 func(*metrics.Summary) float64
		}{
			{"TTFT", func(s *metrics.Summary) float64 { return s.MeanTTFTMs }, func(s *metrics.Summary) float64 { return s.MedianTTFTMs },
				func(s *metrics.Summary) float64 { return s.P90TTFTMs }, func(s *metrics.Summary) float64 { return s.P99TTFTMs }},
			{"TPOT", func(s *metrics.Summary) float64 { return s.MeanTPOTMs }, func(s *metrics.Summary) float64 { return s.MedianTPOTMs },
				func(s *metrics.Summary) float64 { return s.P90TPOTMs }, func(s *metrics.Summary) float64 { return s.P99TPOTMs }},
			{"ITL", func(s *metrics.Summary) float64 { return s.MeanITLMs }, func(s *metrics.Summary) float64 { return s.MedianITLMs },
				func(s *metrics.Summary) float64 { return s.P90ITLMs }, func(s *metrics.Summary) float64 { return s.P99ITLMs }},
			{"E2EL", func(s *metrics.Summary) float64 { return s.MeanE2ELMs }, func(s *metrics.Summary) float64 { return s.MedianE2ELMs },
				func(s *metrics.Summary) float64 { return s.P90E2ELMs }, func(s *metrics.Summary) float64 { return s.P99E2ELMs }},
		} {
			row("Mean "+m3.name+" (ms)", m3.mean)
			row("P50 "+m3.name+" (ms)", m3.p50)
			row("P90 "+m3.name+" (ms)", m3.p90)
			row("P99 "+m3.name+" (ms)", m3.p99)
		}
		row("Request throughput (req/s)", func(s *metrics.Summary) float64 { return s.RequestThroughput })
		row("Output throughput (tok/s)", func(s *metrics.Summary) float64 { return s.OutputThroughput })
		fmt.Fprintf(w, "%-28s %10.2f %7s %10.2f %7s %9s\n", "Prefix cache hit rate (%)", 100*p.PrefixCacheHitRate, "", 100*m.PrefixCacheHitRate, "",
			fmt.Sprintf("%+.1fpt", 100*(p.PrefixCacheHitRate-m.PrefixCacheHitRate)))
		printPDTiers(w, run)
		fmt.Fprintf(w, "%-28s %10d %7s %10d\n", "Completed (fewest)", p.Completed, "", m.Completed)
		fmt.Fprintf(w, "%-28s %10s %7s %10.2f   (%d steps)\n", "Step time / modelled", "", "", run.StepTimeRatio, run.Steps)
		if p, m := requestsPerEngine(run.Repeats); len(p) > 1 && m != nil {
			fmt.Fprintf(w, "%-28s %10s %7s %10s   (all repeats; %s)\n", "Requests per engine", joinInts(p), "", joinInts(m), sameEngineNote(run.Repeats))
		}
		var lag50, lag99 float64
		reordered, routerOrder := 0, len(run.Repeats) > 0
		for _, r := range run.Repeats {
			lag50, lag99 = max(lag50, r.SendLag.MedianMs), max(lag99, r.SendLag.P99Ms)
			reordered = max(reordered, r.SendLag.Reordered)
			routerOrder = routerOrder && r.SendLag.RouterOrder
		}
		if routerOrder {
			fmt.Fprintf(w, "Replayed in the order the router decided: %d of %d requests reached it out of send order (most in a repeat).\n", reordered, m.Completed+m.Failed)
		}
		fmt.Fprintf(w, "Sent late by p50 %.1f ms, p99 %.1f ms (worst repeat); on the scheduled arrivals the simulator\n", lag50, lag99)
		fmt.Fprintf(w, "predicts mean TTFT %.2f ms (spread %s), %s against the measured.\n", run.Scheduled.MeanTTFTMs,
			pct(spread(scheduledValues(run, func(s *metrics.Summary) float64 { return s.MeanTTFTMs }))), relError(run.Scheduled.MeanTTFTMs, m.MeanTTFTMs))
		for k, r := range run.Repeats {
			if len(run.Repeats) > 1 {
				fmt.Fprintf(w, "Repeat %d: ", k+1)
			}
			printRunCPU(w, r.CPU, rep.CPUs)
		}
		if m.Failed > 0 || p.Failed > 0 {
			fmt.Fprintf(w, "%-28s %10d %7s %10d   (most in a repeat)\n", "Failed", p.Failed, "", m.Failed)
			total := 0
			for _, r := range run.Repeats {
				total += r.Measured.Completed + r.Measured.Failed
			}
			reportFailures(w, run.Failures, total, benchHint)
		}
		if len(run.Repeats) > 0 && run.Repeats[0].Explain != nil {
			printExplain(w, run.Repeats[0].Explain)
		}
	}
	if len(rep.Runs) > 1 {
		fmt.Fprintf(w, "\nRanking by mean TTFT  predicted: %s   measured: %s   %s\n",
			strings.Join(rankByTTFT(rep.Runs, true), " < "), strings.Join(rankByTTFT(rep.Runs, false), " < "),
			map[bool]string{true: "(same)", false: "(different; below: which pairs are decided)"}[sameRanking(rep.Runs)])
	}
	printRankings(w, rep)
}

func relError(predicted, measured float64) string {
	if measured == 0 {
		return "-"
	}
	return fmt.Sprintf("%+.1f%%", 100*(predicted-measured)/measured)
}

func rankByTTFT(runs []fidelityRun, predicted bool) []string {
	idx := make([]int, len(runs))
	for i := range idx {
		idx[i] = i
	}
	ttft := func(i int) float64 {
		if predicted {
			return runs[i].Predicted.MeanTTFTMs
		}
		return runs[i].Measured.MeanTTFTMs
	}
	for i := 1; i < len(idx); i++ {
		for j := i; j > 0 && ttft(idx[j]) < ttft(idx[j-1]); j-- {
			idx[j], idx[j-1] = idx[j-1], idx[j]
		}
	}
	names := make([]string, len(idx))
	for i, k := range idx {
		names[i] = runs[k].Label
	}
	return names
}

func sameRanking(runs []fidelityRun) bool {
	return strings.Join(rankByTTFT(runs, true), "\x00") == strings.Join(rankByTTFT(runs, false), "\x00")
}

// requestsPerEngine sums each world's requests per engine over the repeats; measured is nil
// when the router did not say which engine served each request.
func requestsPerEngine(repeats []fidelityRepeat) (predicted, measured []int) {
	for _, r := range repeats {
		if r.MeasuredPerEngine == nil {
			return nil, nil
		}
		predicted, measured = addInts(predicted, r.PredictedPerEngine), addInts(measured, r.MeasuredPerEngine)
	}
	return predicted, measured
}

func addInts(sum, v []int) []int {
	if sum == nil {
		sum = make([]int, len(v))
	}
	for i := range min(len(sum), len(v)) {
		sum[i] += v[i]
	}
	return sum
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, "/")
}

// sameEngineNote says for what share of requests both worlds chose the same engine, the
// mean over the repeats that could tell.
func sameEngineNote(repeats []fidelityRepeat) string {
	var sum float64
	n := 0
	for _, r := range repeats {
		if r.SameEngine >= 0 {
			sum += r.SameEngine
			n++
		}
	}
	if n == 0 {
		return "which request went where is unknown"
	}
	return fmt.Sprintf("%.0f%% of requests on the same engine in both worlds", 100*sum/float64(n))
}
