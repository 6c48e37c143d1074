package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"servelab/engine/backend"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/policies/scale"
	"servelab/real/local"
	"servelab/real/router"
	"servelab/sim"
)

// clusterFlags describe a local cluster: the engines' flags (vLLM's names) and the router's.
type clusterFlags struct {
	engines int
	// prefillEngines is up's --prefill-engines: that many more engines run with --role
	// prefill, and the --engines ones with --role decode.
	prefillEngines      int
	model               string
	batch               string
	evict               string
	blockSize           int
	numBlocks           int
	maxNumSeqs          int
	maxNumBatchedTokens int
	maxModelLen         int
	threads             int
	prefixCaching       bool
	router              routerFlags
	verbose             bool
	pinCPUs             bool           // --pin-cpus
	cpus                *local.CPUPlan // what --pin-cpus resolved to (resolveCPUs); nil: unpinned
	// kvTiers are every engine's KV tiers (--kv-tier MEDIUM:BLOCKS[:EVICT]; a preset is the
	// simulator's alone and not passed), a disk tier's file in kvTierDir.
	kvTiers   []sim.KVTierSpec
	kvTierDir string
	// kvLink is the simulator's KV link preset for a cluster with prefill engines (fidelity).
	kvLink string
	// kvEventsTransport is up's --kv-events-transport: "http", "zmq", or "" (http, or zmq
	// when the --router or --ab-router EndpointPickerConfig has a kvEventsConfig).
	kvEventsTransport string
}

func (f *clusterFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.IntVar(&f.engines, "engines", 2, "number of engine processes")
	fl.StringVar(&f.model, "model", "", "model directory every engine serves (required)")
	fl.StringVar(&f.batch, "batch", "vllm", "batch policy spec of every engine")
	fl.StringVar(&f.evict, "evict", "lru", "KV eviction policy spec of every engine")
	fl.IntVar(&f.blockSize, "block-size", 16, "tokens per KV cache block")
	fl.IntVar(&f.numBlocks, "num-gpu-blocks-override", 0, "KV blocks per engine (default: the engine's memory budget)")
	fl.IntVar(&f.maxNumSeqs, "max-num-seqs", 0, "most sequences per engine step (default: the batch policy's)")
	fl.IntVar(&f.maxNumBatchedTokens, "max-num-batched-tokens", 0, "token budget per engine step (default: the batch policy's)")
	fl.IntVar(&f.maxModelLen, "max-model-len", 0, "context length (default: the model's)")
	fl.IntVar(&f.threads, "threads", 0, "CPU threads per engine (default: the machine's CPUs divided among the engines; with --pin-cpus, each engine's CPUs)")
	fl.BoolVar(&f.prefixCaching, "enable-prefix-caching", true, "reuse KV blocks of shared prompt prefixes")
	fl.DurationVar(&f.router.scrape, "scrape-interval", router.DefaultScrapeInterval, "how often the router reads each engine's /metrics")
	fl.BoolVar(&f.router.kvEvents, "kv-events", true, "the router follows the engines' KV events for an exact prefix index")
	fl.StringVar(&f.router.latencyProfile, "latency-profile", "", "a 'servelab profile' of the engines, for the router's predicted-latency-scorer")
	fl.StringVar(&f.router.slo, "slo", "", "the router's default objectives of requests without x-slo-* headers, for its predicted-latency-scorer and its SLO counts (--autoscale metric=slo): ttft:MS,tpot:MS[,e2el:MS]")
	fl.Uint64Var(&f.router.seed, "seed", 0, "seed of randomised policies (and, in fidelity, of the prompts)")
	fl.BoolVar(&f.verbose, "verbose", false, "print the engines' output")
}

// threadsPerEngine divides the machine among the engines, so they do not fight over cores:
// pinned, an engine's CPUs.
func (f *clusterFlags) threadsPerEngine() int {
	if f.threads > 0 {
		return f.threads
	}
	if f.cpus != nil {
		return len(f.cpus.Engines[0])
	}
	return max(1, runtime.NumCPU()/max(f.total(), 1))
}

// total is the number of engine processes: --engines, plus --prefill-engines.
func (f *clusterFlags) total() int { return f.engines + max(f.prefillEngines, 0) }

// roles are the engines' llm-d roles: none without --prefill-engines, else the prefill
// engines first, then the decode engines.
func (f *clusterFlags) roles() []string {
	if f.prefillEngines <= 0 {
		return nil
	}
	roles := make([]string, 0, f.total())
	for i := range f.total() {
		if i < f.prefillEngines {
			roles = append(roles, route.RolePrefill)
		} else {
			roles = append(roles, route.RoleDecode)
		}
	}
	return roles
}

// engineFlags are the flags each engine of the cluster runs with.
func (f *clusterFlags) engineFlags() engineFlags {
	return engineFlags{
		model: f.model, blockSize: f.blockSize, prefixCaching: f.prefixCaching, maxModelLen: f.maxModelLen,
		kvCacheMemory: backend.DefaultKVCacheMemory, numBlocksOverride: f.numBlocks,
		maxNumSeqs: f.maxNumSeqs, maxNumBatchedTokens: f.maxNumBatchedTokens,
		batchSpec: f.batch, evictSpec: f.evict, threads: f.threadsPerEngine(),
	}
}

// batchSpec is the engines' batch policy spec with the limit flags folded in, as the
// simulator must run it.
func (f *clusterFlags) batchSpec() string {
	spec, err := policies.ParseSpec(f.batch)
	if err != nil {
		return f.batch // the engines and the simulator report the error
	}
	for key, v := range map[string]int{"max_num_seqs": f.maxNumSeqs, "max_num_batched_tokens": f.maxNumBatchedTokens} {
		if v > 0 {
			if spec.Params == nil {
				spec.Params = map[string]string{}
			}
			spec.Params[key] = strconv.Itoa(v)
		}
	}
	return spec.String()
}

func (f *clusterFlags) options(log io.Writer) (local.Options, error) {
	if f.engines <= 0 {
		return local.Options{}, fmt.Errorf("--engines must be at least 1, got %d", f.engines)
	}
	if f.model == "" {
		return local.Options{}, errors.New("--model is required")
	}
	if f.prefillEngines < 0 {
		return local.Options{}, fmt.Errorf("--prefill-engines must be 0 or more, got %d", f.prefillEngines)
	}
	args := []string{"--model", f.model, "--batch", f.batch, "--evict", f.evict,
		"--block-size", strconv.Itoa(f.blockSize), "--threads", strconv.Itoa(f.threadsPerEngine()),
		"--enable-prefix-caching=" + strconv.FormatBool(f.prefixCaching)}
	for _, o := range []struct {
		flag string
		v    int
	}{{"--num-gpu-blocks-override", f.numBlocks}, {"--max-num-seqs", f.maxNumSeqs},
		{"--max-num-batched-tokens", f.maxNumBatchedTokens}, {"--max-model-len", f.maxModelLen}} {
		if o.v > 0 {
			args = append(args, o.flag, strconv.Itoa(o.v))
		}
	}
	for _, t := range f.kvTiers {
		arg := fmt.Sprintf("%s:%d", t.Medium, t.Blocks)
		if t.Evict != "" {
			arg += ":" + t.Evict
		}
		args = append(args, "--kv-tier", arg)
		if t.Medium == "disk" {
			if f.kvTierDir == "" {
				return local.Options{}, errors.New("a disk KV tier needs a directory for its file")
			}
			args = append(args, "--kv-tier-dir", f.kvTierDir)
		}
	}
	rf := f.router
	rf.blockSize = f.blockSize
	rf.model = f.model
	cfg, err := rf.config()
	if err != nil {
		return local.Options{}, fmt.Errorf("--router: %w", err)
	}
	opts := local.Options{Engines: f.total(), EngineArgs: args, Router: cfg, Log: log, CPUs: f.cpus}
	if opts.KVEventsZMQ, err = f.kvEventsOverZMQ(rf.fileKV); err != nil {
		return local.Options{}, err
	}
	opts.KVEventsModel = filepath.Base(f.model)
	if roles := f.roles(); roles != nil {
		if _, ok := cfg.Policy.(*route.PDProfileHandler); !ok {
			return local.Options{}, fmt.Errorf("--prefill-engines %d: --router %s is not a P/D EndpointPickerConfig (a pd-profile-handler with decode and prefill profiles, e.g. examples/router/llm-d-pd.yaml), so nothing would send the prefill engines work",
				f.prefillEngines, rf.spec)
		}
		opts.Roles = roles
		opts.EngineArgsFor = func(i int) []string { return []string{"--role", roles[i]} }
	}
	return opts, nil
}

// kvEventsOverZMQ is whether the engines publish their KV events over ZeroMQ, each on
// sockets of its own, for the router to follow (--kv-events-transport; files are the
// kvEventsConfigs of the --router and --ab-router EndpointPickerConfigs, empty without
// one).
func (f *clusterFlags) kvEventsOverZMQ(files []*route.KVEventsConfig) (bool, error) {
	switch f.kvEventsTransport {
	case "", "http", "zmq":
	default:
		return false, fmt.Errorf("--kv-events-transport %q: want http or zmq", f.kvEventsTransport)
	}
	zmq := f.kvEventsTransport == "zmq" || f.kvEventsTransport == "" && len(files) > 0
	switch {
	case f.kvEventsTransport == "http" && len(files) > 0:
		return false, fmt.Errorf("--kv-events-transport http and %s: the kvEventsConfig subscribes over ZeroMQ; drop one", route.KVEventsFields(files, ""))
	case zmq && !f.router.kvEvents:
		what := "--kv-events-transport zmq"
		if f.kvEventsTransport == "" {
			what = route.KVEventsFields(files, "")
		}
		return false, fmt.Errorf("--kv-events=false and %s: the router would follow no KV events, so the engines would publish them for nobody; drop one", what)
	}
	return zmq, nil
}

func newUpCmd() *cobra.Command {
	var f clusterFlags
	var host string
	var port int
	var restart local.RestartPolicy
	var autoscale, scaleLogPath string
	cmd := &cobra.Command{
		Use:   "up --engines N --model DIR --router SPEC [--batch SPEC] [--evict SPEC] [--prefill-engines P]",
		Short: "Run a local serving cluster: N engine processes and the router, on loopback",
		Long: `Start N 'servelab engine' processes on free loopback ports and the router in front of them,
wait until every engine answers /health, and print the router's endpoint (an OpenAI-compatible
API; replay a trace against it with 'servelab bench --endpoint URL'). Ctrl-C or SIGTERM stops
the router, lets engines finish in-flight requests and stops them; engines also stop if this
process dies (on Linux).

An engine that exits on its own (a crash, kill -9) does not stop the cluster: the router sends
new requests, and requests the dead engine had not answered yet, to the others (a stream that had
started is cut), and 'up' restarts the engine on the same port after --restart-backoff, doubling
per consecutive crash up to 30s; it counts as back once it answers /health, and its crash count
starts again after it has stayed up for a minute. Each step is reported on stderr (engine, exit
status or signal, restart delay, attempt). An engine that crashes --max-restarts times in a row
is left down and says why; 'up' exits (status 1) only when no engine is left.

--pin-cpus gives each engine its own CPUs (see the flag). It is off by default: a serving cluster
shares the machine with whatever else runs there (a second 'up', a benchmark, the dashboard), and
fixed pins of two such processes would land on the same CPUs, where the kernel's scheduler would
have spread them; 'servelab fidelity', a measurement, pins by default.

Prefill/decode disaggregation: --prefill-engines P starts P more engines with --role prefill and
the --engines ones with --role decode, and the router in P/D mode; --router must then be an llm-d
P/D EndpointPickerConfig (examples/router/llm-d-pd.yaml), e.g.
  servelab up --model DIR --prefill-engines 1 --engines 2 --router examples/router/llm-d-pd.yaml
(see 'servelab router --help' for the flow).

KV events: by default the router follows each engine's /v1/kv_events. --kv-events-transport zmq
has the engines publish them over ZeroMQ as vLLM does (--kv-events-config), each on PUB and replay
sockets of its own on 127.0.0.1 (free ports, kept across a restart, printed beside its URL), and
the router subscribe to each at its addresses (URL#kv-events=..., see 'servelab router --help');
it is the default when the --router (or --ab-router) EndpointPickerConfig has a kvEventsConfig.

Autoscaling: --autoscale SPEC starts the policy's min-replicas engines and then starts and
drains engines by the scaling policy (policies/scale; the same code and scale.Scaler the
simulator's --autoscale runs), every interval seconds, on the router's view of the ready engines
(their vllm:num_requests_waiting/_running and kv_cache_usage_perc as it scrapes them) and its
servelab_router_decisions_total and servelab_router_slo_requests_total. A started engine joins the router once it answers /health; the
time from the decision to then (the real scale-up delay: the model load) is printed. A drained
engine is removed from the router first, then sent SIGTERM, on which it finishes its requests and
exits. A crashed engine is restarted as without --autoscale (same port, --restart-backoff,
--max-restarts) and stays its replica: the policy counts it as starting (not ready, so nothing is
started in its place) and the router leaves it out until it answers /health again; a scale-down
meanwhile stops it for good (a restarting engine is picked before a ready one is drained), and an
engine given up frees its replica for the policy to start another ('up' exits when none is
left). With --autoscale, --engines is the policy's min-replicas and --prefill-engines is
refused; --pin-cpus plans a CPU set for each of max-replicas engines: an engine started takes
the lowest-numbered free set, a restart keeps its own, a drained engine frees its set once its
process exits, and a scale-up that finds every set held (by engines still draining) waits for
one rather than share CPUs. metric=slo reads the router's servelab_router_slo_requests_total: each
request measured against its x-slo-ttft-ms / x-slo-tpot-ms headers, else --slo (as the simulator's
SLO attainment: TTFT, TPOT, E2E; a failed request missed, one without objectives met).

` + "Scaling policies (--autoscale):\n" + scale.Registry.Help(),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var log io.Writer = io.Discard
			if f.verbose {
				log = cmd.ErrOrStderr()
			}
			if autoscale == "" { // else upAutoscale plans for max-replicas engines
				if err := f.resolveCPUs(); err != nil {
					return err
				}
			}
			opts, err := f.options(log)
			if err != nil {
				return err
			}
			if restart.Backoff <= 0 {
				return fmt.Errorf("--restart-backoff must be positive, got %v", restart.Backoff)
			}
			if restart.MaxRestarts < 0 {
				return fmt.Errorf("--max-restarts must be 0 (never restart) or more, got %d", restart.MaxRestarts)
			}
			opts.RouterAddr = fmt.Sprintf("%s:%d", host, port)
			if restart.MaxRestarts == 0 {
				restart.MaxRestarts = -1 // local.RestartPolicy: negative means never
			}
			opts.Restart = &restart
			var scaler scale.Policy
			if autoscale != "" {
				if scaler, err = upAutoscale(cmd, &f, &opts, autoscale); err != nil {
					return err
				}
			}
			opts.Events = cmd.ErrOrStderr()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			out := cmd.OutOrStdout()
			if f.prefillEngines > 0 {
				fmt.Fprintf(out, "starting %d prefill and %d decode engines (%d threads each) serving %s ...\n", f.prefillEngines, f.engines, f.threadsPerEngine(), f.model)
			} else {
				fmt.Fprintf(out, "starting %d engines (%d threads each) serving %s ...\n", f.engines, f.threadsPerEngine(), f.model)
			}
			if f.cpus != nil {
				fmt.Fprintf(out, "CPUs: %s\n", f.cpus)
			}
			c, err := local.Start(ctx, opts)
			if err != nil {
				return err
			}
			pids := c.PIDs()
			roles := f.roles()
			for i, ep := range c.Endpoints {
				role := ""
				if i < len(roles) {
					role = "  " + roles[i]
				}
				kv := ""
				if pub, replay := c.KVEvents(i); pub != "" {
					kv = fmt.Sprintf("  KV events %s (replay %s)", pub, replay)
				}
				fmt.Fprintf(out, "engine-%d  %s%s  (pid %d)%s\n", i, ep, role, pids[i], kv)
			}
			fmt.Fprintf(out, "router (%s) listening on %s\n", f.router.describePolicy(), c.URL)
			fmt.Fprintf(out, "OpenAI API: %s/v1   metrics: %s/metrics   Ctrl-C stops the cluster\n", c.URL, c.URL)
			if scaler != nil {
				ao := local.AutoscaleOptions{Policy: scaler, Gatherer: opts.Router.Registry,
					Logf: func(format string, args ...any) { fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...) }}
				if scaleLogPath != "" {
					l, err := openScaleLog(scaleLogPath)
					if err != nil {
						c.Stop(5 * time.Second)
						return err
					}
					defer l.Close()
					ao.OnDecision = func(o scale.Observation, d scale.Decision, a scale.Actions) { l.write(o, d, a) }
				}
				actx, acancel := context.WithCancel(ctx)
				scaled := make(chan struct{})
				defer func() { acancel(); <-scaled }() // its last lines before up returns
				go func() {
					defer close(scaled)
					loads, err := c.Autoscale(actx, ao)
					if err != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "autoscale: %v\n", err)
					}
					if len(loads) > 0 {
						fmt.Fprintf(cmd.ErrOrStderr(), "autoscale: engines took %v from decision to ready\n", loads)
					}
				}()
			}
			var runErr error
			select {
			case <-ctx.Done():
			case runErr = <-c.Done():
			}
			fmt.Fprintln(out, "stopping the cluster")
			if err := c.Stop(15 * time.Second); runErr == nil {
				runErr = err
			}
			return runErr
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&f.router.spec, "router", "least-request", "routing policy spec or EndpointPickerConfig YAML file")
	f.router.flow.register(cmd.Flags())
	f.router.addABFlags(cmd.Flags())
	cmd.Flags().StringVar(&f.kvEventsTransport, "kv-events-transport", "", "how the router follows the engines' KV events: http (their /v1/kv_events; the default) or zmq (each engine publishes over ZeroMQ as vLLM does, --kv-events-config, on PUB and replay sockets of its own on 127.0.0.1, and the router subscribes to each; the default when the --router or --ab-router EndpointPickerConfig has a kvEventsConfig)")
	cmd.Flags().IntVar(&f.prefillEngines, "prefill-engines", 0, "start this many more engines with --role prefill (the --engines ones get --role decode) and route prefill/decode-disaggregated; needs a P/D --router config")
	cmd.Flags().DurationVar(&f.router.prefillTimeout, "prefill-timeout", router.DefaultPrefillTimeout, "with --prefill-engines: time a prefill leg may take")
	cmd.Flags().StringVar(&host, "host", "127.0.0.1", "address the router binds")
	cmd.Flags().IntVar(&port, "port", 8080, "router port (0 picks a free one)")
	cmd.Flags().DurationVar(&restart.Backoff, "restart-backoff", time.Second, "wait before restarting an engine that exited; doubles per consecutive crash, up to 30s")
	f.registerPinCPUs(cmd, false)
	cmd.Flags().StringVar(&scaleLogPath, "scale-log", "", "with --autoscale: write every scaling decision to this file as JSON lines (the format servelab sim --scale-log writes)")
	cmd.Flags().StringVar(&autoscale, "autoscale", "", "scaling policy spec (listed below, e.g. hpa:metric=queue,target=4,max-replicas=4): start and drain engines by it")
	cmd.Flags().IntVar(&restart.MaxRestarts, "max-restarts", 5, "consecutive restarts of an engine that keeps crashing before it is left down (0: never restart)")
	return cmd
}
