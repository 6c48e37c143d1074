package model

// Act names one of a forward step's activation buffers, each with one row per token of
// the step (LogitRows' rows excepted):
//
//	ActX    [T, Dim]            the residual stream
//	ActXN   [T, Dim]            the normalised residual (the linear layers' input)
//	ActQKV  [T, QDim+2*KVDim]   the fused q/k/v projection (q pre-scaled after RopeStore)
//	ActAtt  [T, QDim]           attention output (o_proj's input)
//	ActGU   [T, 2*Hidden]       the fused gate/up projection
//	ActAct  [T, Hidden]         SwiGLU's output (down_proj's input)
type Act uint8

const (
	ActX Act = iota
	ActXN
	ActQKV
	ActAtt
	ActGU
	ActAct
)

// Norm names a decoder layer's RMSNorm weight.
type Norm uint8

const (
	NormAttn Norm = iota // input_layernorm
	NormFFN              // post_attention_layernorm
)

// Matrix names a decoder layer's (fused) weight matrix, [out, in] as Hugging Face stores
// it, so a linear layer is y = x·Wᵀ.
type Matrix uint8

const (
	MatQKV  Matrix = iota // q_proj, k_proj, v_proj rows: [QDim+2*KVDim, Dim]
	MatO                  // o_proj: [Dim, QDim]
	MatGU                 // gate_proj, up_proj rows: [2*Hidden, Dim]
	MatDown               // down_proj: [Dim, Hidden]
)

// Kernels is the backend interface of the forward pass: the per-step kernels that
// [Forward] drives layer by layer. The CPU implementation is the Runner's (engine/cpu's
// kernels and pool); cuda/gpu implements it with CUDA kernels. A backend owns its weights,
// its KV cache and its activation buffers; the step's layout comes in Begin, and each
// call computes over all of the step's rows. An error (a device failure) ends the step.
type Kernels interface {
	// Begin starts a step over st's layout (which stays unchanged until the step ends):
	// the backend sizes its activations and, on a device, uploads the layout.
	Begin(st *Step) error
	// Embed: ActX row t = the token embedding of st.Tokens[t].
	Embed() error
	// RMSNorm: ActXN = RMSNorm(ActX) with layer's weight w and the model's epsilon.
	RMSNorm(layer int, w Norm) error
	// Linear: out = in·Wᵀ for layer's matrix w, or out += in·Wᵀ when accumulate (the
	// residual connections).
	Linear(layer int, w Matrix, in, out Act, accumulate bool) error
	// RopeStore finishes ActQKV: the q/k/v biases (when the model has them), rotary
	// embedding of queries and keys at each row's position, the attention scale
	// 1/sqrt(HeadDim) folded into the queries, and each row's keys and values stored in
	// layer's KV cache at its slot.
	RopeStore(layer int) error
	// Attention: ActAtt = causal attention of each row's queries over its sequence's
	// keys and values at positions [0, pos], read from layer's cache through the block
	// tables, grouped-query heads sharing KV heads.
	Attention(layer int) error
	// SwiGLU: ActAct = silu(gate)·up of ActGU.
	SwiGLU() error
	// Logits ends the step: the final RMSNorm of st.LogitRows' rows of ActX, the
	// classifier (lm_head), and the rows on the host, [len(LogitRows)][Vocab], valid
	// until the next step.
	Logits() ([][]float32, error)
}

// TokenKernels is the optional Kernels interface of a backend that takes the argmax of
// greedy rows itself. On a GPU that is the point: lm_head's output stays on the device and
// a greedy row sends back one int32 instead of Vocab float32s (513 KB per sequence for
// Llama 3's 128256, 131 MB a step at batch 256), as vLLM samples on the GPU. The CPU
// kernels need not implement it: their rows are already in host memory.
type TokenKernels interface {
	Kernels
	// LogitsTokens ends the step as Logits does, except for the rows st.GreedyLogits
	// names: for those, logits[i] is nil and tokens[i] is the argmax of the row as
	// engine/sampling.Argmax takes it (the largest value, the lowest index among equals,
	// NaN never chosen, 0 when every value is NaN). With greedy rows tokens has one entry
	// per logit row, those of the other rows unspecified; without, it may be nil. Both are
	// valid until the next step.
	LogitsTokens() (logits [][]float32, tokens []int32, err error)
}

// Forward runs one step through k: the decoder layers of Llama-family models, pre-norm,
// with the projections that share an input fused. layers is the model's number of
// decoder layers. It stops at the first error.
func Forward(k Kernels, st *Step, layers int) ([][]float32, error) {
	if err := runLayers(k, st, layers); err != nil {
		return nil, err
	}
	return k.Logits()
}

// ForwardTokens is Forward ending in k.LogitsTokens: the greedy rows (st.GreedyLogits)
// come back as tokens, the others as logits.
func ForwardTokens(k TokenKernels, st *Step, layers int) ([][]float32, []int32, error) {
	if err := runLayers(k, st, layers); err != nil {
		return nil, nil, err
	}
	return k.LogitsTokens()
}

// runLayers runs the step up to the logits: Begin, the embedding and every decoder layer.
func runLayers(k Kernels, st *Step, layers int) error {
	if err := k.Begin(st); err != nil {
		return err
	}
	if st.T() == 0 {
		return nil
	}
	if err := k.Embed(); err != nil {
		return err
	}
	for l := range layers {
		if err := k.RMSNorm(l, NormAttn); err != nil {
			return err
		}
		if err := k.Linear(l, MatQKV, ActXN, ActQKV, false); err != nil {
			return err
		}
		if err := k.RopeStore(l); err != nil {
			return err
		}
		if err := k.Attention(l); err != nil {
			return err
		}
		if err := k.Linear(l, MatO, ActAtt, ActX, true); err != nil {
			return err
		}
		if err := k.RMSNorm(l, NormFFN); err != nil {
			return err
		}
		if err := k.Linear(l, MatGU, ActXN, ActGU, false); err != nil {
			return err
		}
		if err := k.SwiGLU(); err != nil {
			return err
		}
		if err := k.Linear(l, MatDown, ActAct, ActX, true); err != nil {
			return err
		}
	}
	return nil
}
