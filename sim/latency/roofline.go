package latency

import (
	"cmp"
	"fmt"
	"math"

	"servelab/serving"
)

// RooflineOptions turn datasheet peaks into achievable rates and add the costs a roofline
// does not see. DefaultRooflineOptions documents the defaults.
type RooflineOptions struct {
	// MFU is the fraction of peak FLOPS that a step's GEMMs and attention reach.
	MFU float64
	// BandwidthEfficiency is the fraction of peak memory bandwidth that streaming the
	// weights and KV cache reaches.
	BandwidthEfficiency float64
	// StepOverhead is seconds per step that do not overlap with the GPU: scheduling,
	// input preparation, sampling and launching the step's kernels.
	StepOverhead float64
	// AllReduceLatency is the fixed seconds of one tensor-parallel all-reduce.
	AllReduceLatency float64
	// ActivationReserveGiB is memory per GPU held back from the KV cache for activations,
	// CUDA graphs and allocations outside PyTorch, which vLLM measures at start-up.
	ActivationReserveGiB float64
}

// DefaultRooflineOptions are the defaults of the "roofline" latency model. They are
// engineering estimates, not measurements; a profile of the real engine (profile:FILE)
// replaces them.
//
//   - MFU 0.65: large BF16 GEMMs typically reach 60-75% of the datasheet peak on Hopper
//     and Ampere, FlashAttention a similar fraction; a step mixes both.
//   - BandwidthEfficiency 0.8: memory-bound GEMV and paged-attention kernels typically
//     stream at 80-90% of peak HBM bandwidth; the lower end also stands in for the
//     activation traffic the model does not count.
//   - StepOverhead 1 ms: the vLLM V1 announcement (blog.vllm.ai, 2025-01-24) puts the GPU
//     time of a Llama-8B step on H100 as low as ~5 ms and names the CPU work around it
//     (API server, scheduling, input preparation, detokenization, streaming) as what V1
//     moved off the critical path into other processes and overlapped work. What is left
//     per step (scheduling, input preparation, sampling, replaying the CUDA graph) is
//     taken to be about a millisecond.
//   - AllReduceLatency 10 µs: the fixed cost of a small all-reduce between GPUs of one
//     node; two per layer.
//   - ActivationReserveGiB 2: what vLLM's start-up profiling leaves aside for 7-8B
//     models at the default max_num_batched_tokens (peak activations plus allocations
//     outside PyTorch), which also covers the ~0.5 GiB the CUDA context takes from the
//     nvidia-smi total that GPU.MemoryMiB records.
func DefaultRooflineOptions() RooflineOptions {
	return RooflineOptions{MFU: 0.65, BandwidthEfficiency: 0.8, StepOverhead: 1e-3, AllReduceLatency: 10e-6, ActivationReserveGiB: 2}
}

func (o RooflineOptions) validate() error {
	if !(o.MFU > 0 && o.MFU <= 1) || !(o.BandwidthEfficiency > 0 && o.BandwidthEfficiency <= 1) {
		return fmt.Errorf("efficiencies must be in (0, 1], got mfu %g, bandwidth_efficiency %g", o.MFU, o.BandwidthEfficiency)
	}
	if !(o.StepOverhead >= 0) || !(o.AllReduceLatency >= 0) || !(o.ActivationReserveGiB >= 0) {
		return fmt.Errorf("overheads must be non-negative, got step %g s, all-reduce %g s, activation reserve %g GiB",
			o.StepOverhead, o.AllReduceLatency, o.ActivationReserveGiB)
	}
	return nil
}

// Roofline bounds a step by compute or by memory traffic, whichever is slower, on one GPU
// of a tensor-parallel group, then adds the group's all-reduces and a fixed overhead:
//
//	time = max(FLOPs / (peak × MFU), bytes / (bandwidth × efficiency))
//	     + all-reduces + StepOverhead
//
// per GPU, with heads and MLP split tp ways:
//
//	FLOPs = 2 × layer weights × new tokens            (q, k, v, o, gate, up, down)
//	      + 2 × lm_head × sequences                   (logits only at sampled positions)
//	      + 4 × head_dim × heads × layers × pairs     (QKᵀ and PV; pairs = prefill causal
//	                                                   pairs + decode context tokens)
//	bytes = weights (once per step: layers and lm_head; the embedding is a gather)
//	      + KV bytes per token × (context tokens read + new tokens written)
//	all-reduces = 2 per layer × (latency + new tokens × hidden × 2 bytes × 2(tp-1)/tp
//	              / interconnect bandwidth)            (ring all-reduce)
type Roofline struct {
	gpu   GPU
	model ModelConfig
	tp    int
	opts  RooflineOptions

	// Per-GPU constants, so StepTime is a handful of multiply-adds.
	flopsPerToken, flopsPerSeq, flopsPerPair float64
	weightBytes                              float64 // streamed every step
	residentBytes                            float64 // held in memory: adds the embedding
	kvBytesPerToken                          float64
	secondsPerFLOP, secondsPerByte           float64
	allReducePerToken, allReduceFixed        float64
}

// NewRoofline builds the model of one instance of tp GPUs serving m.
func NewRoofline(gpu GPU, m ModelConfig, tp int, opts RooflineOptions) (*Roofline, error) {
	if err := gpu.validate(); err != nil {
		return nil, err
	}
	if err := m.normalize(); err != nil {
		return nil, fmt.Errorf("model %s: %w", m.Name, err)
	}
	if err := m.checkTP(tp); err != nil {
		return nil, fmt.Errorf("model %s: %w", m.Name, err)
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if m.Name == "" {
		m.Name = cmp.Or(m.NameOrPath, m.ModelType, "model")
	}
	if tp > 1 && gpu.InterconnectGBps <= 0 {
		return nil, fmt.Errorf("GPU %s has no interconnect bandwidth for tensor parallelism", gpu.Name)
	}
	dtype, _ := m.dtypeBytes()
	t := float64(tp)
	h, layers := float64(m.HiddenSize), float64(m.NumHiddenLayers)
	layer := m.layer(tp)
	lmHead := float64(m.VocabSize) * h / t // vocab-parallel, like the embedding
	kvHeads := float64(max(1, m.NumKeyValueHeads/tp))
	r := &Roofline{
		gpu: gpu, model: m, tp: tp, opts: opts,
		flopsPerToken:   2 * layers * layer.linear,
		flopsPerSeq:     2 * lmHead,
		flopsPerPair:    4 * layers * float64(m.HeadDim) * float64(m.NumAttentionHeads/tp),
		weightBytes:     dtype * (layers*(layer.linear+layer.extra) + h + lmHead),
		kvBytesPerToken: dtype * 2 * layers * kvHeads * float64(m.HeadDim),
		secondsPerFLOP:  1 / (gpu.PeakTFLOPS * 1e12 * opts.MFU),
		secondsPerByte:  1 / (gpu.MemoryBandwidthGBps * 1e9 * opts.BandwidthEfficiency),
	}
	r.residentBytes = r.weightBytes
	if !m.TieWordEmbeddings {
		r.residentBytes += dtype * lmHead
	}
	if tp > 1 {
		ring := 2 * (t - 1) / t / (gpu.InterconnectGBps * 1e9)
		r.allReducePerToken = 2 * layers * h * dtype * ring
		r.allReduceFixed = 2 * layers * opts.AllReduceLatency
	}
	return r, nil
}

// Name implements Model.
func (r *Roofline) Name() string {
	return fmt.Sprintf("roofline(%s on %dx %s)", r.model.Name, r.tp, r.gpu.Name)
}

// StepTime implements Model.
func (r *Roofline) StepTime(s serving.StepShape) float64 {
	tokens := float64(s.PrefillTokens + s.DecodeSeqs)
	if tokens == 0 {
		return 0
	}
	t := math.Max(r.FLOPs(s)*r.secondsPerFLOP, r.Bytes(s)*r.secondsPerByte)
	return t + r.allReducePerToken*tokens + r.allReduceFixed + r.opts.StepOverhead
}

// FLOPs is the floating-point work of step s on one GPU, as StepTime counts it (see
// Roofline).
func (r *Roofline) FLOPs(s serving.StepShape) float64 {
	tokens := float64(s.PrefillTokens + s.DecodeSeqs)
	seqs := float64(s.PrefillSeqs + s.DecodeSeqs)
	pairs := s.PrefillAttention + float64(s.DecodeContextTokens)
	return r.flopsPerToken*tokens + r.flopsPerSeq*seqs + r.flopsPerPair*pairs
}

// Bytes is the memory traffic of step s on one GPU, as StepTime counts it: the streamed
// weights (StreamedWeightBytes) and the KV cache read and written.
func (r *Roofline) Bytes(s serving.StepShape) float64 {
	tokens := float64(s.PrefillTokens + s.DecodeSeqs)
	return r.weightBytes + r.kvBytesPerToken*(float64(s.ContextTokens)+tokens)
}

// StreamedWeightBytes is the weights one GPU reads every step: its shard of every layer,
// the final norm and the lm_head (not the embedding, which a step gathers rows of). Over
// the HBM bandwidth it bounds single-stream decode.
func (r *Roofline) StreamedWeightBytes() float64 { return r.weightBytes }

// GPU is the accelerator the roofline models.
func (r *Roofline) GPU() GPU { return r.gpu }

// WeightBytes is the weights one GPU holds: its shard of every layer, the lm_head and,
// unless tied, the embedding.
func (r *Roofline) WeightBytes() float64 { return r.residentBytes }

// KVBytesPerToken is the KV cache one token takes on one GPU: keys and values of its KV
// heads in every layer.
func (r *Roofline) KVBytesPerToken() float64 { return r.kvBytesPerToken }

// KVCacheBlocks implements Capacity the way vLLM sizes num_gpu_blocks: each GPU's memory
// times gpuMemoryUtilization, less the weights and the activation reserve, in blocks of
// blockSize tokens of that GPU's KV shard. It fails when nothing is left.
func (r *Roofline) KVCacheBlocks(blockSize int, gpuMemoryUtilization float64) (int, error) {
	if blockSize <= 0 {
		return 0, fmt.Errorf("block size must be positive, got %d", blockSize)
	}
	if !(gpuMemoryUtilization > 0 && gpuMemoryUtilization <= 1) {
		return 0, fmt.Errorf("gpu memory utilization must be in (0, 1], got %g", gpuMemoryUtilization)
	}
	const gib = 1 << 30
	requested := r.gpu.MemoryBytes() * gpuMemoryUtilization
	reserve := r.opts.ActivationReserveGiB * gib
	blocks := math.Floor((requested - r.residentBytes - reserve) / (r.kvBytesPerToken * float64(blockSize)))
	if blocks < 1 {
		return 0, fmt.Errorf("%s does not fit on %d x %s at gpu_memory_utilization %g: per GPU, weights %.2f GiB + activation reserve %.2f GiB leave no KV cache in %.2f GiB",
			r.model.Name, r.tp, r.gpu.Name, gpuMemoryUtilization, r.residentBytes/gib, reserve/gib, requested/gib)
	}
	return int(blocks), nil
}

// MaxModelLen implements Capacity: max_position_embeddings, as vLLM derives max_model_len.
func (r *Roofline) MaxModelLen() int { return r.model.MaxPositionEmbeddings }
