package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"servelab/cuda/telemetry"
	"servelab/engine"
	"servelab/engine/backend"
	"servelab/engine/server"
	"servelab/internal/kvevents"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
)

// engineFlags mirror vLLM's serve flags where they mean the same.
type engineFlags struct {
	model               string
	device              string  // cpu or cuda (engine_device.go)
	dtype               string  // vLLM's --dtype
	gpuMemUtil          float64 // vLLM's --gpu-memory-utilization
	servedName          string
	host                string
	port                int
	apiKey              string
	maxNumSeqs          int
	maxNumBatchedTokens int
	blockSize           int
	prefixCaching       bool
	maxModelLen         int
	kvCacheMemory       int64
	numBlocksOverride   int
	batchSpec           string
	evictSpec           string
	threads             int
	seed                uint64
	maxWaiting          int
	stepLog             string
	bodyTimeout         time.Duration
	idleTimeout         time.Duration
	maxInFlight         int
	maxBodyBytes        int64
	tiers               tierFlags // engine_tiers.go
	kvEventsConfig      string    // vLLM's --kv-events-config JSON (engine_kvevents.go)
	// Prefill/decode disaggregation.
	role              string
	kvTransferTimeout time.Duration
	kvPullTimeout     time.Duration
	kvTransferHost    string
	kvAllowHosts      []string
	kvTestPause       int
	kvOnPause         func(requestID string, sent, total int) // tests: called instead of printing

	// NVML sampling with --device cuda (engine_gpu.go).
	gpuTelemetryInterval  time.Duration
	gpuTelemetryAnyDevice bool // tests: sample (go-nvml's mock, openGPUTelemetry) whatever the device
}

func (f *engineFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.model, "model", "", "Hugging Face model directory (config.json, model.safetensors, tokenizer.json)")
	fl.StringVar(&f.device, "device", "cpu", deviceHelp)
	fl.DurationVar(&f.gpuTelemetryInterval, "gpu-telemetry-interval", telemetry.DefaultInterval, gpuTelemetryHelp)
	fl.StringVar(&f.dtype, "dtype", "auto", dtypeHelp)
	fl.Float64Var(&f.gpuMemUtil, "gpu-memory-utilization", backend.DefaultGPUMemoryUtilization, "--device cuda: the fraction of the GPU's memory the engine may use; the KV cache gets what the weights and activations leave of it (vLLM's flag)")
	fl.StringVar(&f.servedName, "served-model-name", "", "model name in the API (default: the directory's base name)")
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to bind")
	fl.IntVar(&f.port, "port", 8000, "port to listen on (0 picks a free one)")
	fl.StringVar(&f.apiKey, "api-key", "", "require this key as a Bearer token on /v1 endpoints (/health and /metrics stay open without it, as in vLLM)")
	fl.DurationVar(&f.bodyTimeout, "body-timeout", server.DefaultBodyTimeout, "time a client has to send a request's body (408 and the connection closed after it); streamed responses are not limited")
	fl.DurationVar(&f.idleTimeout, "idle-timeout", server.DefaultIdleTimeout, "close keep-alive connections idle this long")
	fl.Int64Var(&f.maxBodyBytes, "max-body-bytes", 0, "largest request body, 413 over it (default: what a prompt filling the context can need, fully JSON-escaped, plus 1 MiB; at most 32 MiB)")
	fl.IntVar(&f.maxInFlight, "max-inflight", server.DefaultMaxInFlight, "most /v1 requests handled at once, streams included; more get a 503 with Retry-After (-1: no cap). Prompts longer than the context are refused after max-model-len+1 tokens, at most GOMAXPROCS tokenized at once")
	fl.IntVar(&f.maxNumSeqs, "max-num-seqs", 0, "most sequences per step (default: the batch policy's, 256)")
	fl.IntVar(&f.maxNumBatchedTokens, "max-num-batched-tokens", 0, "token budget per step (default: the batch policy's, 2048)")
	fl.IntVar(&f.blockSize, "block-size", 16, "tokens per KV cache block")
	fl.BoolVar(&f.prefixCaching, "enable-prefix-caching", true, "reuse KV blocks of shared prompt prefixes")
	fl.IntVar(&f.maxModelLen, "max-model-len", 0, "context length (default: the model's, capped by the KV cache)")
	fl.Int64Var(&f.kvCacheMemory, "kv-cache-memory-bytes", 0, "memory for the KV cache (default: 1 GiB on --device cpu; on cuda what --gpu-memory-utilization leaves)")
	fl.IntVar(&f.numBlocksOverride, "num-gpu-blocks-override", 0, "number of KV blocks, overriding --kv-cache-memory-bytes (vLLM's name)")
	fl.StringVar(&f.batchSpec, "batch", "vllm", "batch policy spec: "+batch.Registry.Names()[0]+", ... (see servelab sim --help)")
	fl.StringVar(&f.evictSpec, "evict", "lru", "KV eviction policy spec")
	fl.IntVar(&f.threads, "threads", 0, "CPU threads for the kernels (default GOMAXPROCS)")
	fl.Uint64Var(&f.seed, "seed", 0, "seed for requests that bring none")
	fl.IntVar(&f.maxWaiting, "max-waiting-requests", 0, "bound of the waiting queue before 429s (default 4 x max-num-seqs)")
	f.tiers.register(fl)
	fl.StringVar(&f.role, "role", "both", "prefill/decode disaggregation role (vLLM's kv_role): prefill serves requests with kv_transfer_params.do_remote_decode and holds their prompt KV for a decode engine to pull (POST /v1/kv_transfer/pull); decode serves requests with do_remote_prefill, pulling that KV first; both serves either. Every role serves plain requests")
	fl.DurationVar(&f.kvTransferTimeout, "kv-transfer-timeout", engine.DefaultKVTransferTimeout, "free a prefill's held KV blocks if no decode engine pulled them within this (vLLM's VLLM_NIXL_ABORT_REQUEST_TIMEOUT)")
	fl.DurationVar(&f.kvPullTimeout, "kv-pull-timeout", server.DefaultKVPullTimeout, "longest a decode engine's pull of one request's KV blocks may take before it answers 503 (x-servelab-retry: kv-pull)")
	fl.StringVar(&f.kvTransferHost, "kv-transfer-host", "", "host a prefill engine advertises as remote_host for the pull (default: --host, or 127.0.0.1 when that is a wildcard)")
	fl.StringSliceVar(&f.kvAllowHosts, "kv-transfer-allow-host", nil, "remote_host values a decode request may name besides loopback addresses (repeatable); others get a 400")
	fl.IntVar(&f.kvTestPause, "kv-transfer-test-pause-after", 0, "test hook: a pull sends this many blocks, prints a line to stderr and stalls until its client goes away")
	fl.MarkHidden("kv-transfer-test-pause-after")
	fl.StringVar(&f.kvEventsConfig, "kv-events-config", "", kvEventsHelp)
	fl.StringVar(&f.stepLog, "step-log", "", "append every engine step's shape and wall time (and when it ended, running, waiting and KV blocks in use after it) to this JSON-lines file (input for 'servelab profile --from-steps'); a step's time is the loop's whole iteration since the previous step ended (admission, scheduling, forward pass, sampling, detokenisation, streaming), so back-to-back steps add up to the busy time")
}

// backendOptions are the backend.Options the flags load the model with; bp (the flags'
// batch policy, or nil) sizes a GPU's activations.
func (f *engineFlags) backendOptions(bp batch.Policy) backend.Options {
	o := backend.Options{
		Dir: f.model, Threads: f.threads, BlockSize: f.blockSize,
		KVCacheMemory: f.kvCacheMemory, NumBlocks: f.numBlocksOverride, MaxModelLen: f.maxModelLen,
		Device: f.device, DType: f.dtype, GPUMemoryUtilization: f.gpuMemUtil,
	}
	if bp != nil {
		l := bp.Limits()
		o.MaxNumBatchedTokens, o.MaxNumSeqs = l.MaxNumBatchedTokens, l.MaxNumSeqs
	}
	return o
}

// batchPolicy builds the batch policy, folding the vLLM-style limit flags into its spec.
func (f *engineFlags) batchPolicy() (batch.Policy, error) {
	return batch.ParseEngineSpec(f.batchSpec, f.maxNumSeqs, f.maxNumBatchedTokens, policies.Env{BlockSize: f.blockSize})
}

// policies builds the batch and evict policies an engine started from these flags runs:
// start uses it, and so does everything that must predict what such an engine reports
// (resolved, fidelity's per-run configuration, fidelityEngineConfig).
func (f *engineFlags) policies() (batch.Policy, evict.Policy, error) {
	bp, err := f.batchPolicy()
	if err != nil {
		return nil, nil, fmt.Errorf("--batch %q: %w", f.batchSpec, err)
	}
	ev, _, err := evict.Registry.Parse(f.evictSpec, policies.Env{BlockSize: f.blockSize})
	if err != nil {
		return nil, nil, fmt.Errorf("--evict %q: %w", f.evictSpec, err)
	}
	return bp, ev, nil
}

// resolved is the configuration an engine started from these flags over backend b runs,
// as the engine reports it (engine.Engine.Resolved, GET /server_info): what a profile
// records and a simulator of the engine is built from.
func (f *engineFlags) resolved(b *backend.Backend) (serving.EngineConfig, error) {
	bp, ev, err := f.policies()
	if err != nil {
		return serving.EngineConfig{}, err
	}
	rc := serving.EngineConfig{
		Batch: bp.Spec().String(), Evict: ev.Spec().String(),
		BlockSize: b.BlockSize, NumGPUBlocks: b.NumBlocks, MaxModelLen: b.MaxModelLen,
		EnablePrefixCaching: f.prefixCaching,
	}
	specs, err := f.tiers.specsFor(b.Cache.BlockBytes())
	if err != nil {
		return serving.EngineConfig{}, err
	}
	tiers, err := sim.ResolveKVTiers(specs, func(int) policies.Env { return policies.Env{BlockSize: b.BlockSize} })
	if err != nil {
		return serving.EngineConfig{}, fmt.Errorf("--kv-tier: %w", err)
	}
	if rc.KVTiers, err = sim.ResolvedKVTiers(tiers, 0); err != nil {
		return serving.EngineConfig{}, fmt.Errorf("--kv-tier: %w", err)
	}
	return rc, nil
}

// running is a started engine and its HTTP server.
type running struct {
	backend  *backend.Backend
	engine   *engine.Engine
	server   *server.Server
	listener net.Listener
	name     string
	stepLog  *stepLog           // nil without --step-log
	tiers    *engineTiers       // nil without KV tiers
	kvEvents *kvEventsPublisher // nil without --kv-events-config
	kvConfig kvevents.Config
	gpu      *telemetry.Sampler // nil unless the engine runs on a GPU with telemetry on
}

// close releases what the engine holds besides its server: the step log, the KV tiers'
// stores and the backend's device (a GPU's memory and context).
func (r *running) close() error {
	err := errors.Join(r.tiers.close(), r.kvEvents.close(), r.backend.Close())
	if r.gpu != nil {
		err = errors.Join(err, r.gpu.Close())
	}
	if r.stepLog == nil {
		return err
	}
	if serr := r.stepLog.close(); serr != nil {
		return serr
	}
	return err
}

func (f *engineFlags) start() (r *running, err error) {
	if err := f.checkDevice(); err != nil {
		return nil, err
	}
	if f.model == "" {
		return nil, errors.New("--model is required")
	}
	switch {
	case f.bodyTimeout < 0:
		return nil, fmt.Errorf("--body-timeout %v: want a positive duration", f.bodyTimeout)
	case f.maxBodyBytes < 0:
		return nil, fmt.Errorf("--max-body-bytes %d: want a positive size", f.maxBodyBytes)
	case f.idleTimeout < 0:
		return nil, fmt.Errorf("--idle-timeout %v: want a positive duration", f.idleTimeout)
	}
	bp, ev, err := f.policies()
	if err != nil {
		return nil, err
	}
	kvCfg, err := kvevents.ParseConfig(cmp.Or(f.kvEventsConfig, "{}"))
	if err != nil {
		return nil, err
	}
	b, err := backend.Load(f.backendOptions(bp))
	if err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			b.Close()
		}
	}()
	name := f.servedName
	if name == "" {
		name = baseName(f.model)
	}
	var steps *stepLog
	var onStep func(serving.StepShape, float64)
	if f.stepLog != "" {
		if steps, err = newStepLog(f.stepLog); err != nil {
			return nil, err
		}
		onStep = steps.observe
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// On a GPU, its DCGM metrics share the engine's /metrics with the vllm: ones.
	gpu, err := f.startGPUTelemetry(reg)
	if err != nil {
		return nil, err
	}
	if gpu != nil {
		defer func() {
			if err != nil {
				gpu.Close()
			}
		}()
	}
	metrics := engine.NewMetrics(reg, name, b.MaxModelLen)
	tiers, err := f.tiers.build(b.Cache, b.BlockSize, f.prefixCaching, metrics)
	if err != nil {
		return nil, err
	}
	eng, err := engine.New(engine.Config{
		ModelName:           name,
		Executor:            b.NewExecutor(),
		NewDecoder:          b.NewDecoder,
		EOS:                 b.EOS(),
		MaxModelLen:         b.MaxModelLen,
		VocabSize:           b.Config.Vocab,
		NumBlocks:           b.NumBlocks,
		BlockSize:           b.BlockSize,
		EnablePrefixCaching: f.prefixCaching,
		Batch:               bp,
		Evict:               ev,
		MaxWaiting:          f.maxWaiting,
		Seed:                f.seed,
		Metrics:             metrics,
		OnStep:              onStep,
		KVTiers:             tiers.kvTiers(),
		KVMover:             tiers.kvMover(),
		KVTransferTimeout:   f.kvTransferTimeout,
	})
	if err != nil {
		tiers.close()
		return nil, err
	}
	if steps != nil {
		steps.mu.Lock()
		steps.stats = eng.Stats
		steps.mu.Unlock()
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(f.host, strconv.Itoa(f.port)))
	if err != nil {
		return nil, err
	}
	kvt, err := f.kvTransfer(ln.Addr())
	if err != nil {
		ln.Close()
		return nil, err
	}
	srv, err := server.New(server.Config{
		Device: &b.Device, Engine: eng, Tokenizer: b.ServerTokenizer(), ModelName: name, MaxModelLen: b.MaxModelLen,
		APIKey: f.apiKey, Registry: reg, BodyTimeout: f.bodyTimeout, IdleTimeout: f.idleTimeout,
		MaxInFlight: f.maxInFlight, MaxBodyBytes: f.maxBodyBytes, Defaults: server.GenerationDefaults{
			Temperature: b.Generation.Temperature, TopP: b.Generation.TopP, TopK: b.Generation.TopK,
		},
		KVTransfer: kvt,
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	kvPub, err := startKVEvents(kvCfg, eng, b.BlockSize)
	if err != nil {
		ln.Close()
		return nil, err
	}
	started = true
	return &running{backend: b, engine: eng, server: srv, listener: ln, name: name, stepLog: steps, tiers: tiers,
		kvEvents: kvPub, kvConfig: kvCfg, gpu: gpu}, nil
}

// kvTransfer is the server's disaggregation configuration, advertising addr.
func (f *engineFlags) kvTransfer(addr net.Addr) (server.KVTransferConfig, error) {
	switch f.role {
	case "", "both", "prefill", "decode":
	default:
		return server.KVTransferConfig{}, fmt.Errorf("--role %q: want prefill, decode or both", f.role)
	}
	host, port := f.kvTransferHost, 0
	if ta, ok := addr.(*net.TCPAddr); ok {
		port = ta.Port
		if host == "" {
			host = f.host
			if ta.IP.IsUnspecified() {
				host = "127.0.0.1"
			}
		}
	}
	c := server.KVTransferConfig{Role: f.role, Host: host, Port: port, AllowHosts: f.kvAllowHosts,
		PullTimeout: f.kvPullTimeout, PauseAfterBlocks: f.kvTestPause}
	if c.OnPause = f.kvOnPause; f.kvTestPause > 0 && c.OnPause == nil {
		c.OnPause = func(id string, sent, total int) {
			fmt.Fprintf(os.Stderr, "kv-transfer test hook: pull of %s paused after %d of %d blocks\n", id, sent, total)
		}
	}
	return c, nil
}

func baseName(dir string) string {
	for len(dir) > 1 && dir[len(dir)-1] == '/' {
		dir = dir[:len(dir)-1]
	}
	for i := len(dir) - 1; i >= 0; i-- {
		if dir[i] == '/' {
			return dir[i+1:]
		}
	}
	return dir
}

func newEngineCmd() *cobra.Command {
	var f engineFlags
	cmd := &cobra.Command{
		Use:   "engine --model DIR [--port N]",
		Short: "Serve a model with the real engine (CPU, or an NVIDIA GPU) behind an OpenAI-compatible API",
		Long: `Serve a Hugging Face model directory (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM;
F32/F16/BF16 safetensors) on the CPU, or with --device cuda on the first NVIDIA GPU (--dtype
float32 or bfloat16, the KV cache sized by --gpu-memory-utilization as vLLM sizes it). The
scheduler, KV block manager and batch/evict policies are the simulator's own, on either device. Endpoints: /v1/completions, /v1/chat/completions (SSE streaming), /v1/models,
/health, /metrics (vLLM metric names), /v1/kv_events (KV cache events for routers) and
/server_info (the resolved configuration as JSON: batch and evict policy specs with every
parameter, block size, KV blocks, max model len, prefix caching; what a simulator of this
engine runs).

Prefill/decode disaggregation (--role, vLLM's kv_transfer_params): a prefill engine answers a
request carrying {"do_remote_decode": true} with kv_transfer_params naming the prompt's KV blocks,
which it holds until a decode engine pulls them (POST /v1/kv_transfer/pull) or
--kv-transfer-timeout passes; a decode engine given those params pulls the blocks, computes the
prompt's last token and continues, or answers 503 with x-servelab-retry: kv-pull when the pull
fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := f.start()
			if err != nil {
				return err
			}
			b := r.backend
			fmt.Fprintf(cmd.OutOrStdout(), "servelab engine: model %s (%s, %d layers, dim %d), %d KV blocks of %d tokens, max model len %d, on %s %s (%s)\n",
				r.name, b.Config.Arch, b.Config.Layers, b.Config.Dim, b.NumBlocks, b.BlockSize, b.MaxModelLen, b.Device.Device, b.Device.Name, b.Device.DType)
			rc := r.engine.Resolved()
			fmt.Fprintf(cmd.OutOrStdout(), "batch %s, evict %s, prefix caching %t (GET /server_info)\n", rc.Batch, rc.Evict, rc.EnablePrefixCaching)
			if d := r.tiers.describe(b.Cache.BlockBytes()); d != "" {
				fmt.Fprintln(cmd.OutOrStdout(), d)
			}
			if f.role != "" && f.role != "both" {
				fmt.Fprintf(cmd.OutOrStdout(), "role %s (prefill/decode disaggregation; KV pulled over POST /v1/kv_transfer/pull)\n", f.role)
			}
			if d := r.kvEvents.describe(r.kvConfig); d != "" {
				fmt.Fprintln(cmd.OutOrStdout(), d)
			}
			if d := describeGPUTelemetry(r.gpu); d != "" {
				fmt.Fprintln(cmd.OutOrStdout(), d)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "listening on http://%s\n", r.listener.Addr())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			errc := make(chan error, 1)
			go func() { errc <- r.server.Serve(r.listener) }()
			select {
			case err := <-errc:
				if !errors.Is(err, http.ErrServerClosed) {
					return err
				}
			case <-ctx.Done():
			}
			fmt.Fprintln(cmd.OutOrStdout(), "shutting down: finishing in-flight requests (10 s)")
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := r.server.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			return r.close()
		},
	}
	f.register(cmd)
	return cmd
}

// stepLog writes engine steps as stepLogRecord JSON lines (latency.Sample and the
// engine's state after the step). The engine loop calls observe; the file is written
// through a buffer and flushed at close.
type stepLog struct {
	mu   sync.Mutex
	file *os.File
	buf  *bufio.Writer
	enc  *json.Encoder
	err  error
	// stats reads the engine's state, published before observe is called; nil leaves
	// the state out.
	stats func() engine.Stats
}

func newStepLog(path string) (*stepLog, error) {
	file, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	buf := bufio.NewWriterSize(file, 1<<16)
	return &stepLog{file: file, buf: buf, enc: json.NewEncoder(buf)}, nil
}

// observe is an engine.Config.OnStep.
func (l *stepLog) observe(shape serving.StepShape, seconds float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return
	}
	rec := stepLogRecord{Sample: latency.Sample{Shape: shape, Seconds: seconds}, EndUnixNs: time.Now().UnixNano()}
	if l.stats != nil {
		st := l.stats()
		rec.Running, rec.Waiting, rec.KVBlocksUsed = st.Running, st.Waiting, st.NumBlocks-st.FreeBlocks
	}
	l.err = l.enc.Encode(rec)
}

func (l *stepLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.buf.Flush()
	if cerr := l.file.Close(); err == nil {
		err = cerr
	}
	if l.err != nil {
		return l.err
	}
	return err
}
