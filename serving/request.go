package serving

// Request is one inference request as it enters the cluster.
type Request struct {
	// ID is unique within a run; in the simulator it is the trace row index.
	ID uint64
	// Arrival is seconds since the start of the run.
	Arrival float64
	// PromptTokens is the length of the prompt in tokens.
	PromptTokens int
	// MaxTokens is how many output tokens the request generates. The simulator replays the
	// trace's output length exactly, so for it this is both the limit and the outcome.
	MaxTokens int
	// BlockHashes are the chained hashes of the prompt's full KV blocks at the engine's block
	// size (see ChainBlockHashes). Prefix caching and prefix-aware routing use them.
	BlockHashes []uint64
	// TokenIDs is the prompt's token ids; only the real engine fills it.
	TokenIDs []int32
	// Session groups the turns of a conversation; 0 means none.
	Session uint64
	// Priority orders requests for the priority batch policy: lower runs first (vLLM).
	Priority int
	// Objective names the request's InferenceObjective (GIE's
	// x-gateway-inference-objective), the class its metrics are reported under; "" for
	// none. FairnessID is its flow within its priority (x-gateway-inference-fairness-id).
	Objective, FairnessID string
	// Arm is the A/B arm (ArmA or ArmB) of a request whose router splits traffic between
	// two routing policies (route.AB); empty otherwise.
	Arm string
	// TTFTSLO and AvgTPOTSLO are the request's latency objectives in seconds (0: none), as
	// GIE's LLMRequest names them: the x-slo-ttft-ms and x-slo-tpot-ms headers llm-d's
	// predicted-latency-scorer reads. The predicted-latency-scorer prefers endpoints
	// predicted to meet them.
	TTFTSLO, AvgTPOTSLO float64
}

// Seq is an engine's state for one admitted request. The engine core owns it; batch
// policies read it and change it only through the Instance operations they are given.
type Seq struct {
	Req    *Request
	Status SeqStatus

	// NumComputed counts tokens whose KV is in the cache (prefix hits included).
	NumComputed int
	// NumOutput counts tokens generated so far.
	NumOutput int
	// NumCachedPrompt is the prompt tokens served from the prefix cache at first admission.
	NumCachedPrompt int
	// Preemptions counts how often the sequence was preempted (by recompute).
	Preemptions int
	// Blocks is the sequence's block table in the KV block manager.
	Blocks []int32
	// Instance is the index of the engine instance serving the request.
	Instance int

	// Times in seconds, on the driver's clock (virtual in the simulator).
	FirstScheduled float64
	FirstToken     float64
	LastToken      float64
	// PrevToken is the time of the token before LastToken, so a driver can read the
	// inter-token latency of the token a step just produced.
	PrevToken float64
	Finish    float64
}

// SeqStatus is where a sequence is in its life.
type SeqStatus uint8

const (
	SeqWaiting SeqStatus = iota
	SeqRunning
	SeqFinished
	SeqAborted
)

func (s SeqStatus) String() string {
	switch s {
	case SeqWaiting:
		return "waiting"
	case SeqRunning:
		return "running"
	case SeqFinished:
		return "finished"
	case SeqAborted:
		return "aborted"
	}
	return "unknown"
}

// NumTokens is the sequence's length so far: prompt plus generated tokens.
func (s *Seq) NumTokens() int { return s.Req.PromptTokens + s.NumOutput }

// Remaining is how many tokens must still be computed before the next token is sampled.
func (s *Seq) Remaining() int { return s.NumTokens() - s.NumComputed }

// InPrefill reports whether the sequence still has prompt tokens (or, after a preemption,
// already generated tokens) to compute before it decodes one token per step.
func (s *Seq) InPrefill() bool { return s.Remaining() > 1 || s.NumOutput == 0 }
