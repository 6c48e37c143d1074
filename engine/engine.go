// Package engine is one real serving instance: it drives the shared scheduler
// (engine/core, with a policies/batch policy and the engine/kv block manager) from a single
// goroutine that runs each planned step through an Executor (the model's forward pass),
// samples the next tokens, applies stop conditions and streams text back to callers.
//
// Callers (the HTTP server) Submit requests from any goroutine and read their Stream; the
// engine never blocks on a slow reader, because a stream queues outputs (one per token)
// until they are read.
package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"servelab/engine/core"
	"servelab/engine/kv"
	"servelab/engine/sampling"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/serving"
)

// Input is one sequence's part of a step, as the executor sees it.
type Input struct {
	// Tokens are the tokens to compute this step.
	Tokens []int32
	// Pos is the position of Tokens[0]: how many tokens of the sequence the KV cache holds.
	Pos int
	// Blocks is the sequence's block table: position p lives in block Blocks[p/blockSize].
	Blocks []int32
	// Logits asks for the logits of the last token.
	Logits bool
	// Greedy, with Logits, says the caller wants only the argmax of that row: its request
	// decodes greedily. The engine sets it only for a TokenExecutor, which may then return
	// the token instead of the row; other executors never see it set.
	Greedy bool
}

// Executor runs one step of the model.
type Executor interface {
	// Execute computes the batch, writing its keys and values into the KV blocks, and
	// returns one logits row per input that asked for one, in order. The rows stay valid
	// until the next call.
	Execute(batch []Input) [][]float32
}

// FallibleExecutor is the optional Executor interface of an executor whose steps can fail:
// a GPU backend's device errors (cuda/gpu). The engine calls ExecuteErr instead of Execute
// (unless the executor is a TokenExecutor: then ExecuteTokens); a failed step aborts its
// requests (finish reason "abort", their KV blocks freed) and the engine goes on with the
// next step, which a backend that cannot recover fails the same way.
type FallibleExecutor interface {
	Executor
	ExecuteErr(batch []Input) ([][]float32, error)
}

// TokenExecutor is the optional Executor interface of an executor that takes the argmax
// of a greedy request's logits itself. A GPU backend (cuda/gpu) reduces the row on the
// device, so one int32 crosses PCIe instead of the vocabulary's logits (513 KB per
// sequence for Llama 3's 128256; 131 MB a step at batch 256), which the engine would
// only reduce to that argmax on the host: vLLM samples on the GPU for the same reason.
// The engine calls ExecuteTokens instead of ExecuteErr and Execute, with Greedy set on
// the inputs whose requests decode greedily (sampling.Params.Greedy); a failed step is
// handled as FallibleExecutor's. The outputs are the same as through Execute: greedy
// sampling is the argmax and draws nothing from the request's random stream.
type TokenExecutor interface {
	Executor
	// ExecuteTokens is ExecuteErr with a token per logits row: for a row whose input was
	// Greedy, tokens[row] is sampling.Argmax of the row's logits (the lowest index among
	// equals, NaN never chosen, 0 when every logit is NaN) and logits[row] may be nil;
	// for the other rows logits[row] is the row, and tokens[row] is not read. Both stay
	// valid until the next call.
	ExecuteTokens(batch []Input) (logits [][]float32, tokens []int32, err error)
}

// TextDecoder turns generated token ids into text incrementally.
type TextDecoder interface {
	// Add returns the text that token id completes (possibly empty).
	Add(id int32) string
	// Flush returns what is left at the end.
	Flush() string
}

// Config assembles an engine.
type Config struct {
	// ModelName is the served model name, used in metric labels.
	ModelName string
	Executor  Executor
	// NewDecoder starts incremental detokenisation for one request.
	NewDecoder func(skipSpecial bool) TextDecoder
	// EOS are the end-of-sequence token ids.
	EOS []int32
	// MaxModelLen is the longest sequence (prompt plus output) in tokens.
	MaxModelLen int
	// VocabSize bounds prompt token ids (a client may send ids); 0 skips the check.
	VocabSize int
	NumBlocks int
	BlockSize int
	// EnablePrefixCaching is vLLM's --enable-prefix-caching.
	EnablePrefixCaching bool
	Batch               batch.Policy
	// Evict orders free blocks for reuse; nil means LRU.
	Evict evict.Policy
	// KVTiers and KVMover are the KV cache's tiers below the accelerator's blocks and the
	// mover of their contents (see tiers.go).
	KVTiers []kv.TierConfig
	KVMover kv.Mover
	// MaxWaiting bounds the waiting queue; a request beyond it gets ErrQueueFull. 0 means
	// 4 x the batch policy's max_num_seqs.
	MaxWaiting int
	// Seed seeds requests that do not bring their own.
	Seed uint64
	// Metrics, if set, receives the engine's observations.
	Metrics *Metrics
	// OnStep, if set, is called from the engine loop after every step with its shape and
	// wall time: the measured counterpart of the simulator's step-time model, whose steps
	// follow each other without a gap. The time is the loop's whole iteration, from the end
	// of the previous step (or from waking up idle) to the end of this one: admitting new
	// requests (prompt block hashing), aborts, planning, the forward pass, sampling, stop
	// conditions, detokenisation and streaming, and the previous OnStep call, so
	// back-to-back steps' times add up to the time the engine was busy. It must be quick.
	OnStep func(shape serving.StepShape, seconds float64)
	// KVTransferTimeout frees the prompt blocks a do_remote_decode request holds for a pull
	// when none claimed them within it (see pd.go); 0 means DefaultKVTransferTimeout.
	KVTransferTimeout time.Duration
}

// SamplingParams are a request's generation parameters, after vLLM's SamplingParams.
type SamplingParams struct {
	sampling.Params
	// MaxTokens is the most tokens to generate.
	MaxTokens int
	// MinTokens suppresses stop conditions until that many tokens were generated.
	MinTokens int
	// Stop strings end generation; the matched string is not returned.
	Stop []string
	// StopTokenIDs end generation like EOS.
	StopTokenIDs []int32
	// IgnoreEOS keeps generating past EOS.
	IgnoreEOS bool
	// SkipSpecialTokens leaves special tokens out of the text (vLLM default true).
	SkipSpecialTokens bool
}

// Request is one generation request.
type Request struct {
	// ID names the request in errors and logs.
	ID       string
	Prompt   []int32
	Sampling SamplingParams
	// Priority orders requests for the priority batch policy: lower runs first.
	Priority int
	// RemoteDecode holds the prompt's full KV blocks for a decode engine to pull when the
	// request finishes at its length (vLLM's do_remote_decode); the last Output's KVHeld
	// names them.
	RemoteDecode bool
	// RemotePrefill, if set, fetches the prompt's KV from the engine that prefilled it
	// before the request is scheduled (vLLM's do_remote_prefill).
	RemotePrefill *RemotePrefill
}

// Bounds on a request's stop conditions, which the engine checks after every token: the
// stop strings are searched in the text each token adds plus the longest string's hold-back,
// so their cost per token is their count times their length. OpenAI allows 4 stop strings;
// vLLM sets no bound.
const (
	MaxStopStrings  = 64
	MaxStopBytes    = 1024
	MaxStopTokenIDs = 1024
)

// Output is what a stream delivers for one generated token: the token and the text it
// makes safe to show (possibly empty: an incomplete UTF-8 sequence, or text a stop string
// may still claim, is held back until a later token or the end releases it).
type Output struct {
	Text     string
	TokenIDs []int32
	// Finished is set on the last output; FinishReason is then "stop", "length" or "abort",
	// and StopReason the stop string or stop token id that matched, if any (vLLM's
	// stop_reason; nil for EOS).
	Finished     bool
	FinishReason string
	StopReason   any
	// Counts as of this output.
	PromptTokens     int
	CachedTokens     int
	CompletionTokens int
	// KVHeld, on the last output of a do_remote_decode request, names the blocks held for
	// a pull.
	KVHeld *HeldKV
	// Err, on the last output (FinishReason "error"), says why the engine could not serve
	// the request: a *KVTransferError.
	Err error
}

// Errors Submit returns; the server maps them to HTTP statuses.
var (
	// ErrQueueFull: the waiting queue is at its bound (HTTP 429).
	ErrQueueFull = errors.New("engine: too many requests waiting")
	// ErrShuttingDown: the engine no longer accepts requests (HTTP 503).
	ErrShuttingDown = errors.New("engine: shutting down")
)

// InvalidRequestError is a request the engine can never serve (HTTP 400).
type InvalidRequestError struct {
	// Param is the OpenAI API parameter at fault.
	Param string
	Msg   string
}

func (e *InvalidRequestError) Error() string { return e.Msg }

// Stats is a snapshot of the engine's state, named after vLLM's metrics.
type Stats struct {
	Running, Waiting int
	// KVCacheUsage is vllm:kv_cache_usage_perc (a fraction).
	KVCacheUsage       float64
	PrefixCacheQueries int64
	PrefixCacheHits    int64
	Preemptions        int64
	Steps              int64
	// FreeBlocks and NumBlocks describe the block manager; FreeBlocks == NumBlocks when no
	// request holds a block.
	FreeBlocks, NumBlocks int
	// KVTiers are the block manager's per-tier counters, the accelerator's first; nil
	// without tiers below it.
	KVTiers []kv.TierStats
	// KVHeldBlocks is the blocks held for decode engines to pull (servelab:kv_transfer_held_blocks),
	// as of the call rather than the last step; they are counted as used in FreeBlocks too.
	KVHeldBlocks int
}

// Engine is one serving instance.
type Engine struct {
	cfg   Config
	inst  *core.Instance
	start time.Time

	mu       sync.Mutex
	incoming []*request
	aborts   []*request
	subs     []*subscriber
	newSubs  []*subscriber
	waiting  int // requests submitted and not yet scheduled for the first time
	open     int // requests submitted and not yet finished
	closing  bool
	wake     chan struct{}
	stats    Stats
	pd       pdState
	kvio     KVBlockIO     // the executor's, if it has it
	tokx     TokenExecutor // the executor, if it takes greedy rows' argmax itself
	done     chan struct{}
	stopLoop bool

	// Owned by the loop goroutine.
	live     map[*serving.Seq]*request
	inputs   []Input
	events   []kv.Event
	eventSeq uint64
	nextID   uint64
	// busySince is when the loop's current stretch of work began: when it woke from idle,
	// or when the previous step ended. Zero while idle.
	busySince time.Time
}

// New builds an engine and starts its loop.
func New(cfg Config) (*Engine, error) {
	if cfg.Executor == nil || cfg.NewDecoder == nil || cfg.Batch == nil {
		return nil, fmt.Errorf("engine: Executor, NewDecoder and Batch are required")
	}
	if cfg.MaxModelLen <= 0 {
		return nil, fmt.Errorf("engine: max model length must be positive, got %d", cfg.MaxModelLen)
	}
	if cfg.BlockSize <= 0 {
		cfg.BlockSize = 16
	}
	if cfg.MaxModelLen > cfg.NumBlocks*cfg.BlockSize {
		// As vLLM refuses to start: a request of the full length could never be scheduled.
		return nil, fmt.Errorf("engine: max model length %d exceeds the KV cache (%d blocks of %d tokens = %d); lower --max-model-len or give the cache more memory",
			cfg.MaxModelLen, cfg.NumBlocks, cfg.BlockSize, cfg.NumBlocks*cfg.BlockSize)
	}
	if cfg.KVTransferTimeout <= 0 {
		cfg.KVTransferTimeout = DefaultKVTransferTimeout
	}
	if cfg.MaxWaiting <= 0 {
		cfg.MaxWaiting = 4 * cfg.Batch.Limits().MaxNumSeqs
	}
	if err := cfg.checkTiers(); err != nil {
		return nil, err
	}
	if cfg.Evict == nil {
		// Built here rather than by the block manager, so Resolved can report it.
		ev, err := evict.Registry.Build(policies.Spec{Name: "lru"}, policies.Env{BlockSize: cfg.BlockSize})
		if err != nil {
			return nil, err
		}
		cfg.Evict = ev
	}
	if len(cfg.KVTiers) > 0 {
		// A tier without a policy gets the block manager's LRU, built here so Resolved can
		// report it; the caller's slice is left as it was.
		cfg.KVTiers = slices.Clone(cfg.KVTiers)
		for i := range cfg.KVTiers {
			if cfg.KVTiers[i].Evict != nil {
				continue
			}
			ev, err := evict.Registry.Build(policies.Spec{Name: "lru"}, policies.Env{BlockSize: cfg.BlockSize})
			if err != nil {
				return nil, err
			}
			cfg.KVTiers[i].Evict = ev
		}
	}
	e := &Engine{
		cfg:   cfg,
		start: time.Now(),
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		live:  map[*serving.Seq]*request{},
		pd:    pdState{holds: map[string]*hold{}},
	}
	e.kvio, _ = cfg.Executor.(KVBlockIO)
	e.tokx, _ = cfg.Executor.(TokenExecutor)
	inst, err := core.New(core.Config{
		KV: kv.Config{
			NumBlocks:           cfg.NumBlocks,
			BlockSize:           cfg.BlockSize,
			EnablePrefixCaching: cfg.EnablePrefixCaching,
			Evict:               cfg.Evict,
			Events:              func(ev kv.Event) { e.events = append(e.events, ev) },
			Tiers:               cfg.KVTiers,
			Mover:               cfg.KVMover,
		},
		Batch: cfg.Batch,
	})
	if err != nil {
		return nil, err
	}
	e.inst = inst
	e.publishStats()
	if cfg.Metrics != nil {
		cfg.Metrics.bind(e)
	}
	go e.loop()
	return e, nil
}

// Config returns the engine's configuration.
func (e *Engine) Config() Config { return e.cfg }

// Resolved returns the engine's fully resolved scheduling configuration: its policies'
// resolved specs (every parameter, defaults included) and its KV cache and context, as
// it runs them. A simulator built from it schedules as this engine does.
func (e *Engine) Resolved() serving.EngineConfig {
	rc := serving.EngineConfig{
		Batch:               e.cfg.Batch.Spec().String(),
		Evict:               e.cfg.Evict.Spec().String(),
		BlockSize:           e.cfg.BlockSize,
		NumGPUBlocks:        e.cfg.NumBlocks,
		MaxModelLen:         e.cfg.MaxModelLen,
		EnablePrefixCaching: e.cfg.EnablePrefixCaching,
	}
	for _, t := range e.cfg.KVTiers {
		rc.KVTiers = append(rc.KVTiers, serving.KVTierConfig{
			Medium: strings.ToLower(t.Medium), Blocks: t.Blocks, Evict: t.Evict.Spec().String()})
	}
	return rc
}

// Stats returns the latest snapshot, taken after each step.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.stats
	st.KVHeldBlocks = e.pd.heldBlocks // current: a hold is visible with the answer naming it
	return st
}

// Validate checks a request against the engine's limits without submitting it. Every size
// a client chooses is compared without arithmetic that could overflow (max_tokens near
// MaxInt once wrapped the context check around), so whatever passes generates at most
// MaxModelLen minus the prompt tokens.
func (e *Engine) Validate(req *Request) error {
	sp := &req.Sampling
	n, maxLen := len(req.Prompt), e.cfg.MaxModelLen
	switch {
	case n == 0:
		return &InvalidRequestError{"prompt", "the prompt is empty"}
	case n >= maxLen:
		return &InvalidRequestError{"prompt", fmt.Sprintf(
			"This model's maximum context length is %d tokens. However, your request has %d input tokens, which leaves no room for the completion. Please reduce the length of the input.", maxLen, n)}
	case sp.MaxTokens <= 0:
		return &InvalidRequestError{"max_tokens", fmt.Sprintf("max_tokens must be at least 1, got %d", sp.MaxTokens)}
	case sp.MaxTokens > maxLen-n: // not n+MaxTokens > maxLen: that sum can wrap around
		return &InvalidRequestError{"max_tokens", fmt.Sprintf(
			"This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the prompt, %d in the completion). Please reduce the length of the prompt or completion.",
			maxLen, uint64(n)+uint64(sp.MaxTokens), n, sp.MaxTokens)}
	case sp.MinTokens < 0 || sp.MinTokens > sp.MaxTokens:
		return &InvalidRequestError{"min_tokens", fmt.Sprintf("min_tokens must be in [0, max_tokens=%d], got %d", sp.MaxTokens, sp.MinTokens)}
	case len(sp.Stop) > MaxStopStrings:
		return &InvalidRequestError{"stop", fmt.Sprintf("at most %d stop strings are allowed, got %d", MaxStopStrings, len(sp.Stop))}
	case len(sp.StopTokenIDs) > MaxStopTokenIDs:
		return &InvalidRequestError{"stop_token_ids", fmt.Sprintf("at most %d stop token ids are allowed, got %d", MaxStopTokenIDs, len(sp.StopTokenIDs))}
	}
	for i, id := range req.Prompt {
		if id < 0 || e.cfg.VocabSize > 0 && int(id) >= e.cfg.VocabSize {
			return &InvalidRequestError{"prompt", fmt.Sprintf("prompt token %d: id %d is outside the vocabulary [0, %d)", i, id, e.cfg.VocabSize)}
		}
	}
	for i, s := range sp.Stop {
		switch {
		case s == "":
			return &InvalidRequestError{"stop", fmt.Sprintf("stop[%d] is empty", i)}
		case len(s) > MaxStopBytes:
			return &InvalidRequestError{"stop", fmt.Sprintf("stop[%d] is %d bytes long; at most %d are allowed", i, len(s), MaxStopBytes)}
		}
	}
	if err := e.validatePD(req); err != nil {
		return err
	}
	if err := sp.Params.Validate(); err != nil {
		// Its messages open with the parameter's OpenAI name.
		param, _, _ := strings.Cut(err.Error(), " ")
		return &InvalidRequestError{param, err.Error()}
	}
	return nil
}

// Submit queues a request. Its output is read from the returned stream; cancelling ctx
// (a client that went away) aborts the request and frees its blocks.
func (e *Engine) Submit(ctx context.Context, req Request) (*Stream, error) {
	if err := e.Validate(&req); err != nil {
		return nil, err
	}
	r := &request{
		Request: req,
		arrival: time.Now(),
		tokens:  slices.Clone(req.Prompt),
	}
	r.stream = newStream(e, r)
	r.stopWatch = context.AfterFunc(ctx, r.stream.Abort)
	e.mu.Lock()
	switch {
	case e.closing:
		e.mu.Unlock()
		r.stopWatch()
		return nil, ErrShuttingDown
	case e.waiting >= e.cfg.MaxWaiting:
		e.mu.Unlock()
		r.stopWatch()
		return nil, ErrQueueFull
	}
	e.waiting++
	e.open++
	e.incoming = append(e.incoming, r)
	e.mu.Unlock()
	e.signal()
	return r.stream, nil
}

func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Engine) abort(r *request) {
	e.mu.Lock()
	// The loop may not have admitted r yet; it checks the flag when it does.
	r.abortRequested = true
	e.aborts = append(e.aborts, r)
	e.mu.Unlock()
	e.signal()
}

// Shutdown stops accepting requests, lets in-flight ones finish until ctx is done, then
// aborts the rest and stops the loop. After it returns every block is free.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	e.closing = true
	e.mu.Unlock()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		e.mu.Lock()
		// Counted from Submit to finish: the published stats lag a step behind the loop,
		// so a request the loop has taken but not yet scheduled would look idle there.
		idle := e.open == 0
		e.mu.Unlock()
		if idle {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-tick.C:
		}
	}
	e.mu.Lock()
	e.stopLoop = true
	e.mu.Unlock()
	e.signal()
	<-e.done
	return err
}

func (e *Engine) now() float64 { return time.Since(e.start).Seconds() }

func (e *Engine) publishStats() {
	st := e.inst.Stats()
	m := e.inst.KV()
	e.mu.Lock()
	e.stats = Stats{
		Running:            e.inst.NumRunning(),
		Waiting:            e.inst.NumWaiting(),
		KVCacheUsage:       m.Usage(),
		PrefixCacheQueries: st.PrefixCacheQueries,
		PrefixCacheHits:    st.PrefixCacheHits,
		Preemptions:        st.Preemptions,
		Steps:              st.Steps,
		FreeBlocks:         m.NumFree(),
		NumBlocks:          m.NumBlocks(),
		KVTiers:            tierStats(m),
	}
	e.mu.Unlock()
}
