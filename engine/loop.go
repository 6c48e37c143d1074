package engine

import (
	"log"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"servelab/engine/sampling"
	"servelab/serving"
)

// request is the loop's state for one submitted request.
type request struct {
	Request
	arrival   time.Time
	stream    *Stream
	stopWatch func() bool

	seq     *serving.Seq
	tokens  []int32 // prompt, then generated tokens
	sampler *sampling.Sampler
	decoder TextDecoder
	// text is the generated text so far; emitted counts its bytes already streamed. With
	// stop strings, the tail that could begin one is held back.
	text      []byte
	emitted   int
	holdBack  int
	lastToken time.Time
	scheduled bool
	done      bool
	// abortRequested is set under Engine.mu by abort.
	abortRequested bool
	pd             pdRequest
}

func (e *Engine) loop() {
	defer close(e.done)
	for {
		if e.busySince.IsZero() {
			e.busySince = time.Now()
		}
		e.mu.Lock()
		incoming, aborts, newSubs := e.incoming, e.aborts, e.newSubs
		e.incoming, e.aborts, e.newSubs = nil, nil, nil
		stop := e.stopLoop
		e.mu.Unlock()

		for _, r := range incoming {
			e.admit(r)
		}
		e.mu.Lock()
		for _, r := range incoming {
			if r.abortRequested && !slices.Contains(aborts, r) {
				aborts = append(aborts, r)
			}
		}
		e.mu.Unlock()
		for _, r := range aborts {
			e.finishAborted(r)
		}
		e.pdDrain()
		e.addSubscribers(newSubs)
		if stop {
			e.abortAll()
			e.pdShutdown()
			e.flushEvents()
			e.closeSubscribers()
			e.publishStats()
			return
		}
		if e.inst.Idle() {
			e.flushEvents()
			e.publishStats()
			e.busySince = time.Time{}
			<-e.wake
			continue
		}
		if !e.step() {
			// Nothing could be scheduled. Waiting disaggregated requests may hold every
			// block, each needing one more for the rest of its prompt: one gives its pulled
			// blocks back and recomputes (without this the loop waited here for good, and the
			// router's decode legs with it).
			if e.inst.ReleaseWaitingBlocks() {
				continue
			}
			// Otherwise (every block held by running requests that are themselves waiting
			// on blocks cannot happen with recompute preemption) this is a request larger
			// than the cache: wait for a change.
			e.flushEvents()
			e.publishStats()
			e.busySince = time.Time{}
			<-e.wake
		}
	}
}

func (e *Engine) admit(r *request) {
	r.Request.ID = strings.Clone(r.Request.ID)
	e.nextID++
	sreq := &serving.Request{
		ID:           e.nextID,
		Arrival:      r.arrival.Sub(e.start).Seconds(),
		PromptTokens: len(r.Prompt),
		MaxTokens:    r.Sampling.MaxTokens,
		TokenIDs:     r.Prompt,
		Priority:     r.Priority,
	}
	if e.cfg.EnablePrefixCaching {
		sreq.BlockHashes = serving.TokenBlockHashes(r.Prompt, e.cfg.BlockSize)
	}
	r.sampler = sampling.New(r.Sampling.Params, e.cfg.Seed^e.nextID*0x9e3779b97f4a7c15)
	r.decoder = e.cfg.NewDecoder(r.Sampling.SkipSpecialTokens)
	for _, s := range r.Sampling.Stop {
		r.holdBack = max(r.holdBack, len(s)-1)
	}
	if r.RemotePrefill != nil {
		// Queued for the scheduler once its KV has landed (pd.go).
		r.pd.sreq = sreq
		e.pd.pending = append(e.pd.pending, r)
		return
	}
	r.seq = e.inst.Add(sreq)
	e.live[r.seq] = r
}

// step plans, executes and completes one engine step; false when nothing was scheduled.
func (e *Engine) step() bool {
	step := e.inst.Plan(e.now())
	shape := step.Shape
	if step.Empty() {
		e.inst.Complete(step, e.now())
		return false
	}
	e.inputs = e.inputs[:0]
	for _, sc := range step.Seqs {
		s := sc.Seq
		r := e.live[s]
		if !r.scheduled {
			r.scheduled = true
			e.mu.Lock()
			e.waiting--
			e.mu.Unlock()
			if m := e.cfg.Metrics; m != nil {
				m.queueTime.Observe(time.Since(r.arrival).Seconds())
			}
		}
		end := s.NumComputed + sc.NumTokens
		last := end == s.NumTokens()
		e.inputs = append(e.inputs, Input{
			Tokens: r.tokens[s.NumComputed:end],
			Pos:    s.NumComputed,
			Blocks: s.Blocks,
			Logits: last,
			Greedy: last && e.tokx != nil && r.sampler.Greedy(),
		})
	}
	var logits [][]float32
	var tokens []int32
	if e.tokx != nil {
		var err error
		if logits, tokens, err = e.tokx.ExecuteTokens(e.inputs); err != nil {
			e.failStep(step, err)
			return true
		}
	} else if fx, ok := e.cfg.Executor.(FallibleExecutor); ok {
		var err error
		if logits, err = fx.ExecuteErr(e.inputs); err != nil {
			e.failStep(step, err)
			return true
		}
	} else {
		logits = e.cfg.Executor.Execute(e.inputs)
	}
	for i, in := range e.inputs {
		// A do_remote_decode request's prompt is computed: hold its blocks before the
		// core frees them at its end.
		if r := e.live[step.Seqs[i].Seq]; r.RemoteDecode && r.pd.holder == nil && in.Logits && r.seq.NumOutput == 0 {
			e.holdPrompt(r)
		}
	}
	now := time.Now()
	row := 0
	sampled := make([]int32, len(step.Seqs))
	for i, in := range e.inputs {
		if !in.Logits {
			continue
		}
		if in.Greedy {
			// The executor took the argmax, which is what Sample would return.
			sampled[i] = tokens[row]
		} else {
			sampled[i] = e.live[step.Seqs[i].Seq].sampler.Sample(logits[row])
		}
		row++
	}
	finished := e.inst.Complete(step, now.Sub(e.start).Seconds())
	for i, sc := range step.Seqs {
		if !sc.Emitted {
			continue
		}
		r := e.live[sc.Seq]
		e.emit(r, sampled[i], now)
	}
	for _, s := range finished {
		if r := e.live[s]; r != nil && !r.done {
			// The core ended it at max_tokens.
			e.finish(r, "length", nil, now)
		}
	}
	if m := e.cfg.Metrics; m != nil {
		m.iterationTokens.Observe(float64(step.Shape.Tokens()))
	}
	e.flushEvents()
	e.publishStats()
	// The step ends here and the next one's time begins: OnStep and whatever the loop does
	// before planning it count in the next step, as the simulator runs steps back to back.
	end := time.Now()
	if e.cfg.OnStep != nil {
		e.cfg.OnStep(shape, end.Sub(e.busySince).Seconds())
	}
	e.busySince = end
	return true
}

// emit appends a sampled token to r and applies the stop conditions in vLLM's order:
// EOS, stop token ids, stop strings, then length (max_tokens, which the core applies, and
// max_model_len).
func (e *Engine) emit(r *request, tok int32, now time.Time) {
	r.tokens = append(r.tokens, tok)
	n := r.seq.NumOutput
	if m := e.cfg.Metrics; m != nil {
		if n == 1 {
			m.ttft.Observe(now.Sub(r.arrival).Seconds())
		} else {
			m.itl.Observe(now.Sub(r.lastToken).Seconds())
		}
		m.generationTokens.Inc()
	}
	r.lastToken = now
	sp := &r.Sampling
	if n > sp.MinTokens || n == sp.MaxTokens {
		if !sp.IgnoreEOS && slices.Contains(e.cfg.EOS, tok) {
			e.finish(r, "stop", nil, now)
			return
		}
		if slices.Contains(sp.StopTokenIDs, tok) {
			e.finish(r, "stop", tok, now)
			return
		}
	}
	before := len(r.text)
	r.text = append(r.text, r.decoder.Add(tok)...)
	if len(sp.Stop) > 0 && n > sp.MinTokens {
		from := max(0, before-r.holdBack)
		for _, stop := range sp.Stop {
			if i := strings.Index(string(r.text[from:]), stop); i >= 0 {
				r.text = r.text[:from+i]
				e.finish(r, "stop", stop, now)
				return
			}
		}
	}
	if r.seq.Status == serving.SeqFinished {
		return // the core finished it at max_tokens; finish() reports it
	}
	if len(r.tokens) >= e.cfg.MaxModelLen {
		// vLLM's check_stop caps every request at max_model_len. Validate keeps max_tokens
		// within what the prompt leaves, so this only backs it up.
		e.finish(r, "length", nil, now)
		return
	}
	e.deliver(r, tok, false)
}

// deliver pushes the new tokens and the text that is safe to show to r's stream.
func (e *Engine) deliver(r *request, tok int32, final bool) {
	upto := len(r.text)
	if !final {
		// The decoder returns whole runes; only the held-back cut may split one.
		upto = max(r.emitted, upto-r.holdBack)
		for upto > r.emitted && upto < len(r.text) && !utf8.RuneStart(r.text[upto]) {
			upto--
		}
	}
	out := Output{
		Text:             string(r.text[r.emitted:upto]),
		PromptTokens:     len(r.Prompt),
		CachedTokens:     r.seq.NumCachedPrompt,
		CompletionTokens: r.seq.NumOutput,
	}
	if tok >= 0 {
		out.TokenIDs = []int32{tok}
	}
	r.emitted = upto
	r.stream.push(out)
}

// finish ends r with the given reason; its blocks are freed.
func (e *Engine) finish(r *request, reason string, stopReason any, now time.Time) {
	if r.done {
		return
	}
	r.done = true
	if r.seq.Status == serving.SeqRunning {
		e.inst.Finish(r.seq, now.Sub(e.start).Seconds())
	}
	if _, cut := stopReason.(string); !cut {
		// Text the decoder held (an incomplete rune) belongs to the output unless a stop
		// string cut it.
		r.text = append(r.text, r.decoder.Flush()...)
	}
	last := int32(-1)
	if r.seq.NumOutput > 0 {
		last = r.tokens[len(r.tokens)-1]
	}
	out := Output{
		Text:             string(r.text[r.emitted:]),
		Finished:         true,
		FinishReason:     reason,
		StopReason:       stopReason,
		PromptTokens:     len(r.Prompt),
		CachedTokens:     r.seq.NumCachedPrompt,
		CompletionTokens: r.seq.NumOutput,
	}
	if last >= 0 && reason != "abort" {
		out.TokenIDs = []int32{last}
	}
	out.KVHeld = e.finishPD(r, reason)
	r.emitted = len(r.text)
	delete(e.live, r.seq)
	e.mu.Lock()
	e.open--
	e.mu.Unlock()
	if r.stopWatch != nil {
		r.stopWatch()
	}
	if m := e.cfg.Metrics; m != nil {
		m.observeFinished(r, reason, now)
	}
	r.stream.push(out)
}

func (e *Engine) finishAborted(r *request) {
	if r.seq == nil && r.RemotePrefill != nil {
		e.abortRemote(r)
		return
	}
	if r.seq == nil || r.done {
		return
	}
	if !r.scheduled {
		r.scheduled = true
		e.mu.Lock()
		e.waiting--
		e.mu.Unlock()
	}
	e.inst.Abort(r.seq)
	e.finish(r, "abort", nil, time.Now())
}

// failStep ends a step whose execution failed. No token was computed, yet planning the
// step entered its new full blocks in the prefix cache (as vLLM's allocate_slots does), and
// a device that failed once may have written any block: so every live request is aborted
// (finish reason "abort", blocks freed) and the prefix cache is reset (vLLM's
// reset_prefix_cache, with its KV event), so no later request reads a block this step
// should have filled. Requests still arriving are served by the next steps, if the
// executor recovers.
func (e *Engine) failStep(step *serving.Step, err error) {
	log.Printf("engine: step of %d sequences failed; aborting %d requests and resetting the prefix cache: %v", len(step.Seqs), len(e.live), err)
	step.Seqs = step.Seqs[:0]
	e.inst.Complete(step, e.now())
	rs := make([]*request, 0, len(e.live))
	for _, r := range e.live {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b *request) int { return int(a.seq.Req.ID - b.seq.Req.ID) })
	for _, r := range rs {
		e.finishAborted(r)
	}
	if !e.inst.KV().ResetPrefixCache() {
		log.Printf("engine: the prefix cache could not be reset (blocks are still held, e.g. for a decode engine's pull)")
	}
}

func (e *Engine) abortAll() {
	// Requests submitted after the last drain are still in incoming; admit them so they
	// are aborted the same way.
	e.mu.Lock()
	incoming := e.incoming
	e.incoming = nil
	e.mu.Unlock()
	for _, r := range incoming {
		e.admit(r)
	}
	rs := make([]*request, 0, len(e.live))
	for _, r := range e.live {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b *request) int { return int(a.seq.Req.ID - b.seq.Req.ID) })
	for _, r := range rs {
		e.finishAborted(r)
	}
}
