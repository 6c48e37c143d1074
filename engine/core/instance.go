// Package core is one engine instance's state machine: waiting and running queues, a
// batch policy that plans each step, and the KV block manager. It has no clock and no
// goroutines: a driver (the simulator, or the real engine's loop) calls Plan, runs the step
// (a latency model, or a model forward pass), and calls Complete with the time it ended.
package core

import (
	"fmt"
	"slices"

	"servelab/engine/kv"
	"servelab/policies/batch"
	"servelab/serving"
)

// Instance is one serving engine's scheduler state.
type Instance struct {
	index  int
	kv     *kv.Manager
	policy batch.Policy
	limits batch.Limits
	cache  bool

	waiting seqQueue
	running []*serving.Seq
	step    serving.Step
	planned bool
	// now is the start time of the step being planned, given by the driver.
	now float64

	// lookup memoises the last prefix-cache lookup, which the policy asks for before it
	// allocates the same sequence.
	lookupSeq    *serving.Seq
	lookupBlocks int

	finished []*serving.Seq
	stats    Stats
}

// Stats are an instance's counters, named after vLLM's metrics.
type Stats struct {
	// PrefixCacheQueries and PrefixCacheHits count prompt tokens looked up in and found in
	// the prefix cache (vllm:prefix_cache_queries, vllm:prefix_cache_hits).
	PrefixCacheQueries int64
	PrefixCacheHits    int64
	// Preemptions is vllm:num_preemptions.
	Preemptions int64
	// Steps counts executed steps.
	Steps int64
}

// Config assembles an instance.
type Config struct {
	Index int
	KV    kv.Config
	Batch batch.Policy
}

// New builds an instance.
func New(cfg Config) (*Instance, error) {
	if cfg.Batch == nil {
		return nil, fmt.Errorf("engine core: no batch policy")
	}
	m, err := kv.New(cfg.KV)
	if err != nil {
		return nil, err
	}
	return &Instance{
		index:  cfg.Index,
		kv:     m,
		policy: cfg.Batch,
		limits: cfg.Batch.Limits(),
		cache:  cfg.KV.EnablePrefixCaching,
	}, nil
}

// KV exposes the block manager (for metrics and tests).
func (in *Instance) KV() *kv.Manager { return in.kv }

// Stats returns the instance's counters.
func (in *Instance) Stats() Stats { return in.stats }

// NumWaiting is vllm:num_requests_waiting.
func (in *Instance) NumWaiting() int { return in.waiting.len() }

// NumRunning is vllm:num_requests_running.
func (in *Instance) NumRunning() int { return len(in.running) }

// Idle reports whether the instance has nothing to do.
func (in *Instance) Idle() bool { return in.waiting.len() == 0 && len(in.running) == 0 }

// View is what a router sees of the instance.
func (in *Instance) View() serving.InstanceView {
	v := serving.InstanceView{
		Index:   in.index,
		Waiting: in.waiting.len(),
		Running: len(in.running),
		KVUsage: in.kv.Usage(),
	}
	if in.cache {
		v.Cache = in.kv
	}
	return v
}

// Add queues a new request and returns its sequence.
func (in *Instance) Add(req *serving.Request) *serving.Seq {
	s := &serving.Seq{Req: req, Status: serving.SeqWaiting, Instance: in.index, FirstScheduled: -1}
	in.waiting.pushBack(s)
	return s
}

// Plan asks the batch policy for the step that starts at time now. The step is valid
// until Complete.
func (in *Instance) Plan(now float64) *serving.Step {
	in.step.Reset()
	in.planned = true
	in.now = now
	in.policy.Plan((*planner)(in))
	return &in.step
}

// Complete applies a planned step that ended at time now: computed tokens are committed,
// a token is emitted for every sequence that caught up with its length, and finished
// sequences release their blocks. It returns the sequences that finished, valid until the
// next Complete.
func (in *Instance) Complete(step *serving.Step, now float64) []*serving.Seq {
	if step != &in.step || !in.planned {
		panic("engine core: Complete without a matching Plan")
	}
	in.planned = false
	in.finished = in.finished[:0]
	if step.Empty() {
		return nil
	}
	in.stats.Steps++
	for i := range step.Seqs {
		sc := &step.Seqs[i]
		s := sc.Seq
		s.NumComputed += sc.NumTokens
		if s.NumComputed < s.NumTokens() {
			continue // a prefill chunk that has not reached the end of the sequence
		}
		sc.Emitted = true
		s.NumOutput++
		if s.NumOutput == 1 {
			s.FirstToken = now
			s.LastToken = now
		}
		s.PrevToken, s.LastToken = s.LastToken, now
		if s.NumOutput >= s.Req.MaxTokens {
			s.Status = serving.SeqFinished
			s.Finish = now
			in.kv.Free(s)
			in.finished = append(in.finished, s)
		}
	}
	if len(in.finished) > 0 {
		kept := in.running[:0]
		for _, s := range in.running {
			if s.Status == serving.SeqRunning {
				kept = append(kept, s)
			}
		}
		clear(in.running[len(kept):])
		in.running = kept
	}
	return in.finished
}

// ReleaseWaitingBlocks frees the blocks of the last waiting sequence that holds any and
// returns true, or returns false when none does. A waiting sequence holds blocks only when
// it was queued with them: a disaggregated request whose prompt KV was pulled from its
// prefill engine (engine/pd.go). With recompute preemption, blocks are otherwise held only
// by running sequences, which the batch policy can preempt, so a step always makes
// progress; pulled blocks break that: when every block is held by waiting pulled requests
// that each need one more, nothing can be scheduled or preempted. The released sequence
// recomputes its prompt locally, as a preempted one does (vLLM's recompute preemption).
// Like Abort, it must not be called between Plan and Complete.
func (in *Instance) ReleaseWaitingBlocks() bool {
	w := in.waiting.items()
	for i := len(w) - 1; i >= 0; i-- {
		s := w[i]
		if len(s.Blocks) == 0 {
			continue
		}
		in.kv.Free(s)
		s.NumComputed = 0
		s.NumCachedPrompt = 0
		s.Preemptions++
		in.stats.Preemptions++
		return true
	}
	return false
}

// Finish ends a running sequence at time now because the driver saw a stop condition
// (an end-of-sequence token or a stop string) before MaxTokens, and frees its blocks. Like
// Abort, it must not be called between Plan and Complete.
func (in *Instance) Finish(s *serving.Seq, now float64) {
	if s.Status != serving.SeqRunning {
		return
	}
	if i := slices.Index(in.running, s); i >= 0 {
		in.running = slices.Delete(in.running, i, i+1)
	}
	in.kv.Free(s)
	s.Status = serving.SeqFinished
	s.Finish = now
}

// Abort removes a request wherever it is and frees its blocks (a client went away). It
// must not be called between Plan and Complete for a sequence in the planned step.
func (in *Instance) Abort(s *serving.Seq) {
	switch s.Status {
	case serving.SeqWaiting:
		if i := in.waiting.index(s); i >= 0 {
			in.waiting.remove(i)
		}
	case serving.SeqRunning:
		if i := slices.Index(in.running, s); i >= 0 {
			in.running = slices.Delete(in.running, i, i+1)
		}
	default:
		return
	}
	in.kv.Free(s)
	s.Status = serving.SeqAborted
}
