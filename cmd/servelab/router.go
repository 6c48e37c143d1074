package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"servelab/engine/model"
	"servelab/engine/tokenizer"
	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/real/router"
)

type routerFlags struct {
	endpoints []string
	spec      string
	host      string
	port      int
	scrape    time.Duration
	blockSize int
	model     string
	kvEvents  bool
	// zmq follows the engines' KV events over ZeroMQ (vLLM's publisher) instead.
	zmq router.ZMQConfig
	// fileKV is the kvEventsConfigs of the --router and --ab-router EndpointPickerConfigs
	// (those that have one, agreeing), set by config; empty without one.
	fileKV []*route.KVEventsConfig
	seed   uint64
	// latencyProfile is a `servelab profile` file whose step-time model the
	// predicted-latency-scorer predicts with (router_slo.go).
	latencyProfile string
	// slo is the default objectives of requests without x-slo-* headers ("ttft:MS,tpot:MS").
	slo string

	apiKey, engineAPIKey string
	bodyTimeout          time.Duration
	idleTimeout          time.Duration
	maxInFlight          int
	// extProcPort serves the Gateway API Inference Extension's endpoint-picker protocol
	// (ext_proc over gRPC) there; -1: not at all.
	extProcPort      int
	extProcFallbacks int
	// prefillTimeout bounds a disaggregated request's prefill leg.
	prefillTimeout time.Duration
	// logf receives the router's endpoint log lines; nil: stderr.
	logf func(format string, args ...any)
	// disc discovers the endpoints from Kubernetes instead (router_discovery.go).
	disc discoveryFlags
	// flow is flow control and the objectives (flowflags.go).
	flow flowFlags

	// abSpec and abFraction run an A/B test of spec and abSpec (ab.go).
	abSpec     string
	abFraction float64
}

func (f *routerFlags) build() (*router.Router, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	return router.New(cfg)
}

// promptTokenLimit is the longest prompt an engine serving dir can accept: its
// config.json's max_position_embeddings (servelab engine refuses a longer
// --max-model-len), else tokenizer_config.json's model_max_length when it is a real
// length, else 1 Mi tokens.
func promptTokenLimit(dir string, tok *tokenizer.Tokenizer) (int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	switch {
	case err == nil:
		c, err := model.ParseConfig(data)
		if err != nil {
			return 0, err
		}
		return c.MaxPos, nil
	case !errors.Is(err, os.ErrNotExist):
		return 0, err
	case tok.ModelMaxLength() > 0 && tok.ModelMaxLength() <= 1<<24:
		return int(tok.ModelMaxLength()), nil
	}
	return 1 << 20, nil
}

// config is the router's configuration without endpoints when f.endpoints is empty.
func (f *routerFlags) config() (router.Config, error) {
	env := policies.Env{Seed: f.seed, BlockSize: f.blockSize}
	if err := f.withLatencyProfile(&env); err != nil {
		return router.Config{}, err
	}
	policy, err := f.policy(env)
	if err != nil {
		return router.Config{}, err
	}
	if err := f.checkLatencyProfile(policy); err != nil {
		return router.Config{}, err
	}
	cfg := router.Config{
		Endpoints: f.endpoints, Policy: policy, ScrapeInterval: f.scrape,
		BlockSize: f.blockSize, KVEvents: f.kvEvents,
		APIKey: f.apiKey, EngineAPIKey: f.engineAPIKey, BodyTimeout: f.bodyTimeout,
		MaxInFlight: f.maxInFlight, Logf: f.logf, PrefillTimeout: f.prefillTimeout,
	}
	// The default objectives the router measures requests against (withLatencyProfile
	// checked them), as its predicted-latency-scorer predicts against them.
	cfg.SLO, _ = metrics.ParseSLO(f.slo)
	switch {
	case f.zmq.SocketPort < 0 || f.zmq.SocketPort > 65535:
		return router.Config{}, fmt.Errorf("--kv-events-socket-port %d: want a port, or 0 for /v1/kv_events", f.zmq.SocketPort)
	case f.zmq.ReplayPort < 0 || f.zmq.ReplayPort > 65535:
		return router.Config{}, fmt.Errorf("--kv-events-replay-port %d: want a port, or 0 for none", f.zmq.ReplayPort)
	}
	if cfg.KVEventsZMQ, err = f.kvEventsZMQ(); err != nil {
		return router.Config{}, err
	}
	if cfg.FlowControl, cfg.Objectives, err = f.flow.parse(); err != nil {
		return router.Config{}, err
	}
	cfg.NoEnginePriority = f.flow.noPriority
	if f.model != "" {
		tok, err := tokenizer.Load(f.model)
		if err != nil {
			return router.Config{}, err
		}
		limit, err := promptTokenLimit(f.model, tok)
		if err != nil {
			return router.Config{}, err
		}
		// Completions prompts are encoded as the engine encodes them, so the router's block
		// hashes equal the engine's and KV events can be matched; no further than an
		// engine could accept, and not after the client left.
		cfg.Encode = func(ctx context.Context, s string) []int32 {
			ids, _, _ := tok.EncodePrefix(ctx, s, true, limit)
			return ids
		}
		// Chat prompts likewise, as the engine's /v1/chat/completions runs them: the chat
		// template applied (the same tokenizer code), encoded without special tokens.
		cfg.EncodeChat = func(ctx context.Context, msgs []router.ChatMessage) []int32 {
			conv := make([]tokenizer.Message, len(msgs))
			for i, m := range msgs {
				conv[i] = tokenizer.Message{Role: m.Role, Content: m.Content}
			}
			text, err := tok.ApplyChatTemplate(conv, true)
			if err != nil {
				return nil
			}
			ids, _, _ := tok.EncodePrefix(ctx, text, false, limit)
			return ids
		}
	}
	return cfg, nil
}

func newRouterCmd() *cobra.Command {
	var f routerFlags
	cmd := &cobra.Command{
		Use:   "router (--endpoints URL,URL,... | --endpoint-selector SELECTOR --endpoint-target-ports PORTS) --router SPEC [--port N] [--ext-proc-port N]",
		Short: "Route OpenAI requests across engines with the simulator's routing policies",
		Long: `An OpenAI-compatible proxy (completions and chat, streaming passed through unbuffered) that
picks an endpoint per request with a routing policy spec or llm-d EndpointPickerConfig file, the
same objects 'servelab sim' uses. Views come from each endpoint's /metrics (vLLM metric names, so
vLLM and llm-d-inference-sim servers work too) and, with --kv-events, from servelab engines'
/v1/kv_events for an exact prefix index, or over ZeroMQ as vLLM publishes them: at
--kv-events-socket-port on each endpoint's host (llm-d's socketPort), at an endpoint's own
addresses (URL#kv-events=tcp://HOST:PORT&kv-events-replay=tcp://HOST:PORT, as 'servelab up
--kv-events-transport zmq' gives them), or as the --router (or --ab-router) EndpointPickerConfig's
precise-prefix-cache-scorer kvEventsConfig says (llm-d-kv-cache's topicFilter, discoverPods,
podDiscoveryConfig.socketPort; both arms' files must agree, and the flags may repeat the file's values, not contradict them). Give --model (the engines' model directory) so prompts are
hashed into the engines' token blocks: completions prompts as the engine encodes them, chat messages
after the model's chat template is applied, as the engine renders them. Failed endpoints are retried elsewhere and skipped until a
scrape answers again; an endpoint going down or coming back is logged on stderr, as is (once per
cause) why its /metrics or KV events are unavailable. Its own metrics:
servelab_router_decisions_total{endpoint}, servelab_router_scoring_seconds,
servelab_router_retries_total, servelab_router_shed_total, and
servelab_router_kv_event_lag_seconds: how long after an engine published a KV-event batch (at the
end of the step that produced it) the batch was in the prefix index, the delay 'servelab sim
--kv-event-delay' models.

Prefill/decode disaggregation: give --router an llm-d P/D EndpointPickerConfig (a pd-profile-handler
or disagg-profile-handler, a prefix-based-pd-decider, and decode and prefill scheduling profiles
with decode-filter and prefill-filter; llm-d's deploy/config/pd-epp-config.yaml loads as written)
and endpoints with roles: --endpoints prefill=URL,decode=URL,... (ROLE is prefill, decode, both or
prefill-decode, the values of llm-d's pod label llm-d.ai/role, which discovery reads; an endpoint
without a role is decode-only, as llm-d's filters treat an unlabelled pod). The router picks the
decode endpoint with the decode profile, asks the decider (disaggregate when at least
nonCachedTokens of the prompt are not cached on it), picks a prefill endpoint with the prefill
profile, and runs the two legs of vLLM's NixlConnector flow as llm-d's routing sidecar does: the
request with max_tokens 1, stream false and kv_transfer_params.do_remote_decode to the prefill
endpoint, then the client's request plus the kv_transfer_params it answered to the decode endpoint,
whose response (streamed or not) passes through; both legs carry x-request-id. A prefill leg that
fails (connection, --prefill-timeout, 5xx) is retried once on another prefill endpoint, then the
decode endpoint runs the request alone; a decode 503 with x-servelab-retry: kv-pull reruns the whole
flow once. Metrics: llm_d_inference_scheduler_disagg_decision_total{model_name,decision_type}
(and llm-d's deprecated llm_d_inference_scheduler_pd_decision_total), servelab_router_prefill_legs_total{outcome},
servelab_router_pd_fallbacks_total, servelab_router_kv_pull_retries_total. Behind a gateway
(--ext-proc-port) the destination is the decode endpoint and the prefill endpoint goes in the
x-prefiller-host-port request header, for llm-d's routing sidecar to run the legs. Without a P/D
config, prefill-only endpoints get no requests.

Keys: --engine-api-key (or $SERVELAB_ENGINE_API_KEY, kept out of ps) is the engines' --api-key; the
router presents it on everything it sends them (proxied requests, replacing the client's
Authorization header; /metrics scrapes; /v1/kv_events). Without it the client's Authorization
header is forwarded unchanged, as llm-d and the Gateway API Inference Extension do. --api-key (or
$SERVELAB_ROUTER_API_KEY) makes the router itself want "Authorization: Bearer KEY" on /v1/*, as
vLLM's --api-key; /health and /metrics stay open.

Kubernetes: instead of --endpoints, --endpoint-selector (a label selector of the engine pods),
--endpoint-target-ports and --pool-namespace (GIE's endpoint picker's standalone-mode flags) make
the router watch the pods and route to the ready ones (Ready condition true, not terminating, with
an IP), at podIP:port, adding and removing endpoints as pods come and go; requests already sent to
a removed pod finish there. The kubeconfig is found as kubectl finds it (--kubeconfig,
$KUBECONFIG, ~/.kube/config, else the pod's service account), and the router needs get, list and
watch on pods in the namespace.

Slow and many clients: a request's body must arrive within --body-timeout (else 408), idle
keep-alive connections close after --idle-timeout, and over --max-inflight requests at once are
refused with 429 and Retry-After (/health and /metrics aside). Responses are not time-limited, so
streams of any length pass. Errors the router answers itself have OpenAI's JSON shape.

Behind a gateway: --ext-proc-port N also serves the Gateway API Inference Extension's endpoint-picker
protocol (Envoy ext_proc over gRPC, on --host) with the same policy, views and --max-inflight. The
gateway sends each request's headers and body (request_body_mode FULL_DUPLEX_STREAMED, as GIE
configures, or BUFFERED); the router answers with the picked endpoint (ip:port, then
--ext-proc-fallbacks more to retry in order, comma-separated) in the x-gateway-destination-endpoint
header and in dynamic metadata envoy.lb/x-gateway-destination-endpoint, and honours a subset hint
(envoy.lb.subset_hint/x-gateway-destination-endpoint-subset). Refusals are immediate responses: 400
for a body that is not a JSON object, 429 over --max-inflight, 503 when no endpoint (of the subset)
is healthy. A request counts in flight from the pick until the response's end or the stream's. The
gRPC health service answers liveness, readiness and envoy.service.ext_proc.v3.ExternalProcessor.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.apiKey == "" {
				f.apiKey = os.Getenv("SERVELAB_ROUTER_API_KEY")
			}
			if f.engineAPIKey == "" {
				f.engineAPIKey = os.Getenv("SERVELAB_ENGINE_API_KEY")
			}
			if f.maxInFlight < 0 {
				return fmt.Errorf("--max-inflight %d: want 0 (no cap) or more", f.maxInFlight)
			}
			if f.extProcPort < -1 || f.extProcPort > 65535 {
				return fmt.Errorf("--ext-proc-port %d: want a port, 0 for a free one, or -1 for none", f.extProcPort)
			}
			if f.prefillTimeout <= 0 {
				return fmt.Errorf("--prefill-timeout %v: want a duration above 0", f.prefillTimeout)
			}
			if f.bodyTimeout <= 0 || f.idleTimeout <= 0 {
				return fmt.Errorf("--body-timeout %v, --idle-timeout %v: want durations above 0", f.bodyTimeout, f.idleTimeout)
			}
			if err := f.disc.check(f.endpoints); err != nil {
				return err
			}
			errw := cmd.ErrOrStderr()
			f.logf = func(format string, args ...any) {
				fmt.Fprintf(errw, "servelab router: %s %s\n", time.Now().Format(time.DateTime), fmt.Sprintf(format, args...))
			}
			r, err := f.build()
			if err != nil {
				return err
			}
			defer r.Close()
			w, err := f.disc.start(cmd.Context(), r, f.logf)
			if err != nil {
				return err
			}
			if w != nil {
				defer w.Stop()
			}
			ln, err := net.Listen("tcp", net.JoinHostPort(f.host, strconv.Itoa(f.port)))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "servelab router: %s, policy %s, listening on http://%s\n", f.disc.describe(w, f.endpoints), f.describePolicy(), ln.Addr())
			srv := router.NewServer(r.Handler(), f.idleTimeout)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			errc := make(chan error, 2)
			if f.extProcPort >= 0 {
				gs, err := r.NewExtProcServer(router.ExtProcConfig{Fallbacks: f.extProcFallbacks})
				if err != nil {
					return err
				}
				gln, err := net.Listen("tcp", net.JoinHostPort(f.host, strconv.Itoa(f.extProcPort)))
				if err != nil {
					return fmt.Errorf("--ext-proc-port: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "servelab router: endpoint picker (ext_proc, gRPC) listening on %s\n", gln.Addr())
				go func() { errc <- gs.Serve(gln) }()
				defer stopGRPC(gs, 10*time.Second)
			}
			go func() { errc <- srv.Serve(ln) }()
			select {
			case err := <-errc:
				if !errors.Is(err, http.ErrServerClosed) {
					return err
				}
			case <-ctx.Done():
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&f.endpoints, "endpoints", nil, "engine base URLs, comma separated; ROLE=URL gives an endpoint llm-d's role (prefill, decode, both, prefill-decode) for a P/D --router config; URL#kv-events=tcp://HOST:PORT[&kv-events-replay=tcp://HOST:PORT] follows that engine's ZeroMQ KV events at its own addresses (engines sharing a host)")
	fl.StringVar(&f.spec, "router", "least-request", "routing policy spec or EndpointPickerConfig YAML file")
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to bind")
	fl.IntVar(&f.port, "port", 8080, "port to listen on (0 picks a free one)")
	fl.DurationVar(&f.scrape, "scrape-interval", router.DefaultScrapeInterval, "how often each endpoint's /metrics is read")
	fl.IntVar(&f.blockSize, "block-size", 16, "the engines' KV block size, for prompt hashing")
	fl.StringVar(&f.model, "model", "", "the engines' model directory, to hash prompts with their tokenizer")
	fl.StringVar(&f.slo, "slo", "", "objectives of requests without x-slo-ttft-ms / x-slo-tpot-ms headers, for the predicted-latency-scorer and servelab_router_slo_requests_total: ttft:MS,tpot:MS[,e2el:MS]")
	fl.StringVar(&f.latencyProfile, "latency-profile", "", "a 'servelab profile' file of the engines: the step-time model the predicted-latency-scorer predicts TTFT and TPOT with")
	fl.BoolVar(&f.kvEvents, "kv-events", true, "follow endpoints' /v1/kv_events for an exact prefix index (servelab engines)")
	fl.IntVar(&f.zmq.SocketPort, "kv-events-socket-port", 0, "follow KV events over ZeroMQ as vLLM publishes them (--kv-events-config) instead of /v1/kv_events: connect to this port on each endpoint's host (llm-d's socketPort; 0: off)")
	fl.IntVar(&f.zmq.ReplayPort, "kv-events-replay-port", 0, "with --kv-events-socket-port: the engines' replay_endpoint port, to fetch missed batches (0: none)")
	fl.StringVar(&f.zmq.TopicFilter, "kv-events-topic-filter", "", "with --kv-events-socket-port: subscribe to topics with this prefix (llm-d's topicFilter, e.g. kv@; default all)")
	fl.Uint64Var(&f.seed, "seed", 0, "seed of randomised policies")
	fl.StringVar(&f.engineAPIKey, "engine-api-key", "", "the engines' API key, sent as a Bearer token on every request to them (default $SERVELAB_ENGINE_API_KEY)")
	fl.StringVar(&f.apiKey, "api-key", "", "require this key as a Bearer token on the router's /v1 endpoints (default $SERVELAB_ROUTER_API_KEY)")
	fl.DurationVar(&f.bodyTimeout, "body-timeout", router.DefaultBodyTimeout, "time a request's body may take to arrive (then 408)")
	fl.DurationVar(&f.idleTimeout, "idle-timeout", router.DefaultIdleTimeout, "idle keep-alive connections close after this")
	fl.IntVar(&f.extProcPort, "ext-proc-port", -1, "also serve GIE's endpoint-picker protocol (Envoy ext_proc, gRPC) on this port (0 picks a free one; -1: off)")
	fl.IntVar(&f.extProcFallbacks, "ext-proc-fallbacks", 0, "endpoints to name after the picked one in x-gateway-destination-endpoint, for the gateway to retry")
	fl.DurationVar(&f.prefillTimeout, "prefill-timeout", router.DefaultPrefillTimeout, "with a P/D --router config: time a prefill leg may take (then it is retried elsewhere or the decode endpoint runs the request alone)")
	fl.IntVar(&f.maxInFlight, "max-inflight", 1024, "requests served at once; more are refused with 429 (0: no cap)")
	f.flow.register(fl)
	f.addABFlags(fl)
	f.disc.addFlags(fl)
	return cmd
}

// stopGRPC lets a gRPC server's streams finish for up to d, then cuts them.
func stopGRPC(s interface {
	GracefulStop()
	Stop()
}, d time.Duration) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		s.Stop()
	}
}

// kvEventsZMQ is the router's ZeroMQ subscription: --kv-events-socket-port,
// --kv-events-replay-port and --kv-events-topic-filter, or the kvEventsConfig (llm-d's
// precise-prefix-cache-scorer parameter, route.KVEventsConfig) of the --router
// EndpointPickerConfig or of an A/B test's --ab-router one (both agreeing when both have
// one: the arms share the router's subscriptions), whose podDiscoveryConfig.socketPort and
// topicFilter the two flags name, with --kv-events-replay-port (llm-d has no replay)
// added. A flag that says otherwise than a file is an error naming both. Endpoints with
// their own addresses (URL#kv-events=...) are followed over ZeroMQ whatever the port. nil:
// none of these.
func (f *routerFlags) kvEventsZMQ() (*router.ZMQConfig, error) {
	kcs, err := route.EndpointPickerKVEventsFiles(f.spec, f.abSpec)
	if err != nil {
		return nil, err
	}
	f.fileKV = kcs
	z := f.zmq
	if len(kcs) > 0 {
		kc := kcs[0]
		z.SocketPort, z.TopicFilter = kc.PodDiscoveryConfig.SocketPort, kc.TopicFilter
		// The agreement rule is route's, shared with the controller, which refuses an
		// LLMService whose router args contradict its EndpointPickerConfig.
		if err := route.KVEventsFlagsAgree(f.zmq.SocketPort, f.zmq.TopicFilter, kcs); err != nil {
			return nil, err
		}
		return &z, nil
	}
	own := slices.ContainsFunc(f.endpoints, func(e string) bool { return strings.Contains(e, "#kv-events=") })
	switch {
	case z.SocketPort > 0:
		return &z, nil
	case z.ReplayPort > 0:
		return nil, fmt.Errorf("--kv-events-replay-port %d needs --kv-events-socket-port", z.ReplayPort)
	case z.TopicFilter != "" && !own:
		return nil, fmt.Errorf("--kv-events-topic-filter %q needs --kv-events-socket-port, endpoints with their own URL#kv-events=tcp://HOST:PORT, or an EndpointPickerConfig kvEventsConfig", z.TopicFilter)
	case z.TopicFilter != "":
		return &z, nil
	}
	return nil, nil
}
