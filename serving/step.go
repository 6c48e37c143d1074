package serving

// Step is what one engine iteration runs: a chunk of new tokens for each scheduled
// sequence (a prefill chunk or a single decode token) plus the sequences preempted to make
// room. The engine core fills it in Plan and applies it in Complete.
type Step struct {
	Seqs      []Scheduled
	Preempted []*Seq
	Shape     StepShape
}

// Scheduled is one sequence's share of a step.
type Scheduled struct {
	Seq *Seq
	// NumTokens is how many new tokens the step computes for the sequence.
	NumTokens int
	// Context is the number of tokens already in the KV cache before the step.
	Context int
	// Emitted is set by Complete when the step produced a token for the sequence.
	Emitted bool
}

// StepShape summarises a step for latency models, so that a step's cost is computed in
// constant time whatever its batch size.
type StepShape struct {
	// PrefillTokens is the new tokens of sequences still in prefill.
	PrefillTokens int `json:"prefill_tokens"`
	// PrefillSeqs is the number of sequences in prefill.
	PrefillSeqs int `json:"prefill_seqs"`
	// DecodeSeqs is the number of sequences decoding one token.
	DecodeSeqs int `json:"decode_seqs"`
	// ContextTokens is the KV tokens read by attention: the sum over sequences of the
	// context before the step plus its new tokens.
	ContextTokens int `json:"context_tokens"`
	// DecodeContextTokens is the part of ContextTokens read by decoding sequences: the
	// query-key pairs of their attention.
	DecodeContextTokens int `json:"decode_context_tokens"`
	// PrefillAttention is the sum over prefill chunks of new*(context+new/2): the number of
	// query-key pairs the chunk's causal attention computes.
	PrefillAttention float64 `json:"prefill_attention"`
}

// Tokens is all new tokens the step computes.
func (s StepShape) Tokens() int { return s.PrefillTokens + s.DecodeSeqs }

// Empty reports whether the step computes nothing.
func (s *Step) Empty() bool { return len(s.Seqs) == 0 }

// Reset empties the step for reuse without freeing its memory.
func (s *Step) Reset() {
	clear(s.Seqs)
	s.Seqs = s.Seqs[:0]
	clear(s.Preempted)
	s.Preempted = s.Preempted[:0]
	s.Shape = StepShape{}
}

// Add appends a sequence's chunk and keeps the shape in step.
func (s *Step) Add(seq *Seq, numTokens int) {
	ctx := seq.NumComputed
	s.Seqs = append(s.Seqs, Scheduled{Seq: seq, NumTokens: numTokens, Context: ctx})
	if seq.InPrefill() {
		s.Shape.PrefillTokens += numTokens
		s.Shape.PrefillSeqs++
		s.Shape.PrefillAttention += float64(numTokens) * (float64(ctx) + float64(numTokens)/2)
	} else {
		s.Shape.DecodeSeqs++
		s.Shape.DecodeContextTokens += ctx + numTokens
	}
	s.Shape.ContextTokens += ctx + numTokens
}
