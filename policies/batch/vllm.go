package batch

import (
	"servelab/policies"
	"servelab/serving"
)

// vLLM's scheduler defaults: H100-class GPUs get a larger step budget and more sequences
// (vllm/engine/arg_utils.py picks them by device class for the V1 engine).
const (
	h100MaxNumBatchedTokens    = 8192
	h100MaxNumSeqs             = 1024
	defaultMaxNumBatchedTokens = 2048
	defaultMaxNumSeqs          = 256
)

// limitParams documents the parameters every continuous-batching policy shares.
var limitParams = []policies.Param{
	{Name: "max_num_batched_tokens", Default: "8192 on h100/h200, else 2048", Doc: "token budget of one step (vLLM --max-num-batched-tokens)"},
	{Name: "max_num_seqs", Default: "1024 on h100/h200, else 256", Doc: "most running sequences (vLLM --max-num-seqs)"},
	{Name: "long_prefill_token_threshold", Default: "0", Doc: "cap on one sequence's prefill chunk per step, 0 = none (vLLM --long-prefill-token-threshold)"},
	{Name: "chunked_prefill", Default: "true", Doc: "split prompts across steps (vLLM --enable-chunked-prefill)"},
}

func readLimits(p *policies.Params, env policies.Env) Limits {
	tokens, seqs := defaultMaxNumBatchedTokens, defaultMaxNumSeqs
	if env.GPUClass == "h100" {
		tokens, seqs = h100MaxNumBatchedTokens, h100MaxNumSeqs
	}
	l := Limits{
		MaxNumBatchedTokens:       p.Int("max_num_batched_tokens", tokens),
		MaxNumSeqs:                p.Int("max_num_seqs", seqs),
		LongPrefillTokenThreshold: p.Int("long_prefill_token_threshold", 0),
		ChunkedPrefill:            p.Bool("chunked_prefill", true),
	}
	p.Check(l.MaxNumBatchedTokens > 0, "max_num_batched_tokens", "a positive integer")
	p.Check(l.MaxNumSeqs > 0, "max_num_seqs", "a positive integer")
	p.Check(l.LongPrefillTokenThreshold >= 0, "long_prefill_token_threshold", "a non-negative integer")
	return l
}

// continuous is vLLM v1's scheduling loop. The policies differ only in which waiting
// sequence is admitted next, which running sequence is preempted, and when admission is
// allowed, so each is this loop with different hooks.
type continuous struct {
	spec   policies.Spec
	limits Limits
	// nextWaiting picks the index of the waiting sequence to admit next.
	nextWaiting func(waiting []*serving.Seq) int
	// victim picks the index of the running sequence to preempt.
	victim func(running []*serving.Seq) int
	// admitOnlyWhenIdle holds admission until the running batch has drained.
	admitOnlyWhenIdle bool
}

func (c *continuous) Limits() Limits { return c.limits }

func (c *continuous) Spec() policies.Spec { return c.spec }

// newContinuous reads the limits and records the resolved spec; the hooks are the caller's.
func newContinuous(p *policies.Params, env policies.Env, c continuous) *continuous {
	c.limits = readLimits(p, env)
	c.spec = p.Resolved()
	return &c
}

// chunk is how many tokens a sequence may compute this step under the budget.
func (c *continuous) chunk(remaining, budget int) int {
	if t := c.limits.LongPrefillTokenThreshold; t > 0 && remaining > t {
		remaining = t
	}
	return min(remaining, budget)
}

func (c *continuous) Plan(inst Instance) {
	budget := c.limits.MaxNumBatchedTokens
	preempted := false
	idleAtStart := len(inst.Running()) == 0

	// Running sequences first, in admission order, each advanced as far as the budget
	// allows. When blocks run out, preempt until the sequence fits or is itself the victim.
	running := inst.Running()
	for i := 0; i < len(running) && budget > 0; {
		s := running[i]
		n := c.chunk(s.Remaining(), budget)
		if n <= 0 {
			i++
			continue
		}
		scheduled := true
		for !inst.Allocate(s, n) {
			v := c.victim(running)
			victim := running[v]
			budget += inst.Preempt(victim)
			preempted = true
			running = inst.Running()
			if victim == s {
				scheduled = false
				break
			}
			if v < i {
				i--
			}
			n = c.chunk(s.Remaining(), budget)
		}
		if !scheduled {
			// The sequence itself was preempted: vLLM stops scheduling running requests.
			break
		}
		inst.Schedule(s, n)
		budget -= n
		running = inst.Running()
		i++
	}

	// Then waiting sequences, unless this step preempted (vLLM admits nothing new then).
	if preempted || (c.admitOnlyWhenIdle && !idleAtStart) {
		return
	}
	for budget > 0 && len(inst.Running()) < c.limits.MaxNumSeqs {
		waiting := inst.Waiting()
		if len(waiting) == 0 {
			return
		}
		s := waiting[c.nextWaiting(waiting)]
		remaining := s.NumTokens() - s.NumComputed
		if s.NumComputed == 0 {
			remaining -= inst.CachedTokens(s)
		}
		if !c.limits.ChunkedPrefill && remaining > budget {
			return
		}
		n := c.chunk(remaining, budget)
		if !inst.Allocate(s, n) {
			return
		}
		inst.Schedule(s, n)
		budget -= n
	}
}

func fcfs([]*serving.Seq) int { return 0 }

func newest(running []*serving.Seq) int { return len(running) - 1 }

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "vllm",
		Doc: "vLLM v1 continuous batching: one token budget per step, running sequences first, " +
			"then waiting ones FCFS; out of blocks, preempt the newest running sequence by recompute",
		Params: limitParams,
		New: func(p *policies.Params, env policies.Env) (Policy, error) {
			return newContinuous(p, env, continuous{nextWaiting: fcfs, victim: newest}), nil
		},
	})
	Registry.Register(policies.Entry[Policy]{
		Name: "static",
		Doc: "static batching, a contrast: a batch is admitted only when the previous one has " +
			"finished entirely; otherwise as vllm",
		Params: limitParams,
		New: func(p *policies.Params, env policies.Env) (Policy, error) {
			return newContinuous(p, env, continuous{nextWaiting: fcfs, victim: newest, admitOnlyWhenIdle: true}), nil
		},
	})
}
