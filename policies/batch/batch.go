// Package batch holds batching policies: what the next engine step runs. A policy sees the
// instance's queues and acts through the Instance operations (allocate KV for a chunk,
// admit a waiting sequence, preempt a running one); the engine core applies the result.
package batch

import (
	"strconv"

	"servelab/policies"
	"servelab/serving"
)

// Instance is the engine state a batch policy schedules over. engine/core implements it;
// the simulator and the real engine share that implementation.
type Instance interface {
	// Waiting returns the waiting queue in arrival order of entry (preempted sequences
	// are put back at the front). The slice is valid until the next operation.
	Waiting() []*serving.Seq
	// Running returns the running sequences in the order they were admitted.
	Running() []*serving.Seq
	// CachedTokens returns how many prompt tokens of a waiting sequence that has never
	// computed anything are in the prefix cache (0 when prefix caching is off). vLLM
	// recomputes the last token of a full hit, so the result is below the prompt length.
	CachedTokens(s *serving.Seq) int
	// Allocate reserves KV blocks so s can compute numTokens more tokens beyond its cached
	// prefix (for a fresh sequence, the prefix CachedTokens reported is taken from the
	// cache and counted as computed). It returns false, changing nothing, when free blocks
	// do not suffice. A successful Allocate must be followed by Schedule of the same chunk.
	Allocate(s *serving.Seq, numTokens int) bool
	// Schedule adds a chunk of numTokens for s to the step being planned. A waiting s is
	// admitted to the running queue.
	Schedule(s *serving.Seq, numTokens int)
	// Preempt frees s's blocks and returns it to the front of the waiting queue to be
	// recomputed later (vLLM's preemption by recompute). If s was already scheduled in
	// this step, its chunk is withdrawn and Preempt returns the chunk's token count so the
	// policy can give it back to its budget.
	Preempt(s *serving.Seq) (withdrawn int)
}

// Limits are a policy's scheduling limits, under vLLM's flag names.
type Limits struct {
	// MaxNumBatchedTokens is the token budget of one step (--max-num-batched-tokens).
	MaxNumBatchedTokens int
	// MaxNumSeqs caps running sequences (--max-num-seqs).
	MaxNumSeqs int
	// LongPrefillTokenThreshold caps one sequence's prefill chunk per step
	// (--long-prefill-token-threshold); 0 means no cap beyond the budget.
	LongPrefillTokenThreshold int
	// ChunkedPrefill lets a prompt be split across steps (--enable-chunked-prefill).
	ChunkedPrefill bool
}

// Policy plans one step.
type Policy interface {
	// Plan schedules the next step through inst's operations.
	Plan(inst Instance)
	// Limits returns the limits the policy was configured with; the engine enforces
	// them on its queues.
	Limits() Limits
	// Spec returns the policy's resolved spec: its name and every parameter at the value
	// it runs with, defaults included (what Registry.Resolve returns for it). Building
	// it again, under any Env, gives a policy that plans the same steps; an engine
	// reports it so a simulator of that engine runs exactly this policy.
	Spec() policies.Spec
}

// Registry holds every batch policy by name.
var Registry = policies.NewRegistry[Policy]("batch")

// ParseEngineSpec builds the batch policy 'servelab engine --batch SPEC' runs: the spec with
// vLLM's limit flags (--max-num-seqs, --max-num-batched-tokens) folded into its parameters
// when above 0, over the other parameters of the same name. The engine and the Kubernetes
// controller (which checks an LLMService's spec.batch and engine args before deploying
// them) both build it here, so they accept and refuse the same specs.
func ParseEngineSpec(text string, maxNumSeqs, maxNumBatchedTokens int, env policies.Env) (Policy, error) {
	spec, err := policies.ParseSpec(text)
	if err != nil {
		return nil, err
	}
	set := func(key string, v int) {
		if v > 0 {
			if spec.Params == nil {
				spec.Params = map[string]string{}
			}
			spec.Params[key] = strconv.Itoa(v)
		}
	}
	set("max_num_seqs", maxNumSeqs)
	set("max_num_batched_tokens", maxNumBatchedTokens)
	return Registry.Build(spec, env)
}
