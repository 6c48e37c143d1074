package serving

// Record is one finished request: the single schema the simulator and the real load
// generator both write. Times are seconds since the start of the run.
type Record struct {
	ID       uint64 `json:"id"`
	Instance int    `json:"instance"`
	// Arrival is when the request reached the router.
	Arrival float64 `json:"arrival_s"`
	// Scheduled is when an engine step first ran part of it (queueing delay ends).
	Scheduled float64 `json:"scheduled_s"`
	// FirstToken and Finish are when the first and the last output token were produced.
	FirstToken float64 `json:"first_token_s"`
	Finish     float64 `json:"finish_s"`

	PromptTokens int `json:"prompt_tokens"`
	CachedTokens int `json:"cached_tokens"`
	OutputTokens int `json:"output_tokens"`
	Preemptions  int `json:"preemptions"`

	// Failed is set for a request that did not complete (the real path only).
	Failed bool   `json:"failed,omitempty"`
	Error  string `json:"error,omitempty"`

	// PrefillInstance is set for a disaggregated request: the instance that ran its
	// prefill (Instance is the decode instance). KVTransfer is how long its prompt's KV
	// took to reach the decode instance, in seconds.
	PrefillInstance *int    `json:"prefill_instance,omitempty"`
	KVTransfer      float64 `json:"kv_transfer_s,omitempty"`

	// Objective is the request's class: its InferenceObjective name ("" for none).
	Objective string `json:"objective,omitempty"`
	// Arm is the A/B arm (ArmA or ArmB) that routed the request, when the router split
	// traffic between two routing policies; empty otherwise.
	Arm string `json:"arm,omitempty"`
}

// TTFT is the time to first token in seconds.
func (r *Record) TTFT() float64 { return r.FirstToken - r.Arrival }

// E2E is the end-to-end latency in seconds.
func (r *Record) E2E() float64 { return r.Finish - r.Arrival }

// TPOT is the mean time per output token after the first, in seconds, as vLLM's benchmark
// computes it; ok is false for requests with a single output token.
func (r *Record) TPOT() (tpot float64, ok bool) {
	if r.OutputTokens < 2 {
		return 0, false
	}
	return (r.Finish - r.FirstToken) / float64(r.OutputTokens-1), true
}

// NewRecord builds the record of a finished sequence.
func NewRecord(s *Seq) Record {
	return Record{
		ID:           s.Req.ID,
		Instance:     s.Instance,
		Arrival:      s.Req.Arrival,
		Scheduled:    s.FirstScheduled,
		FirstToken:   s.FirstToken,
		Finish:       s.Finish,
		PromptTokens: s.Req.PromptTokens,
		CachedTokens: s.NumCachedPrompt,
		OutputTokens: s.NumOutput,
		Preemptions:  s.Preemptions,
		Objective:    s.Req.Objective,
		Arm:          s.Req.Arm,
	}
}
