package latency

import (
	"fmt"
	"math"

	"servelab/serving"
)

// RooflineOptions are the efficiencies that turn datasheet peaks into achievable rates.
type RooflineOptions struct {
	// MFU is the fraction of peak FLOPS that large GEMMs reach (default 0.65).
	MFU float64
	// BandwidthEfficiency is the fraction of peak memory bandwidth streaming reaches
	// (default 0.8).
	BandwidthEfficiency float64
	// StepOverhead is fixed seconds per step: scheduling, input preparation, sampling and
	// kernel launches that do not overlap with the GPU (default 1 ms).
	StepOverhead float64
	// AllReduceLatency is fixed seconds per all-reduce under tensor parallelism (default
	// 10 µs).
	AllReduceLatency float64
	// ActivationReserveGiB is memory per GPU kept for activations, CUDA graphs and the
	// non-torch allocations vLLM profiles at start-up (default 2 GiB).
	ActivationReserveGiB float64
}

// DefaultRooflineOptions are the defaults documented on RooflineOptions.
func DefaultRooflineOptions() RooflineOptions {
	return RooflineOptions{MFU: 0.65, BandwidthEfficiency: 0.8, StepOverhead: 1e-3, AllReduceLatency: 10e-6, ActivationReserveGiB: 2}
}

// Roofline bounds a step by compute or by memory traffic, whichever is slower, per GPU of a
// tensor-parallel group, plus the group's all-reduces and a fixed overhead.
type Roofline struct {
	gpu   GPU
	model ModelConfig
	tp    int
	opts  RooflineOptions

	// Per-GPU constants, precomputed so StepTime is a handful of multiply-adds.
	flopsPerToken      float64 // linear layers
	flopsPerSeq        float64 // lm_head, once per sequence
	flopsPerPair       float64 // attention, per query-key pair over all layers
	weightBytes        float64 // streamed each step: every layer and the lm_head
	weightMemory       float64 // resident: the embedding table too
	kvBytesPerToken    float64
	flopRate, byteRate float64
	allReducePerToken  float64
	allReduceFixed     float64
}

// NewRoofline builds the model for one instance of tp GPUs.
func NewRoofline(gpu GPU, m ModelConfig, tp int, opts RooflineOptions) (*Roofline, error) {
	if tp <= 0 {
		return nil, fmt.Errorf("tensor parallelism must be positive, got %d", tp)
	}
	if m.NumAttentionHeads%tp != 0 {
		return nil, fmt.Errorf("tensor parallelism %d does not divide the %d attention heads", tp, m.NumAttentionHeads)
	}
	if gpu.PeakTFLOPS <= 0 || gpu.MemoryBandwidthGBps <= 0 {
		return nil, fmt.Errorf("GPU %s lacks peak FLOPS or bandwidth", gpu.Name)
	}
	if opts.MFU <= 0 || opts.MFU > 1 || opts.BandwidthEfficiency <= 0 || opts.BandwidthEfficiency > 1 {
		return nil, fmt.Errorf("efficiencies must be in (0, 1], got mfu %g, bandwidth %g", opts.MFU, opts.BandwidthEfficiency)
	}
	dtype, _ := dtypeBytes(m.TorchDtype)
	t := float64(tp)
	h, layers := float64(m.HiddenSize), float64(m.NumHiddenLayers)
	lmHead := float64(m.VocabSize) * h
	// With more GPUs than KV heads, vLLM replicates KV heads so each GPU holds one.
	kvHeadsPerGPU := math.Max(1, float64(m.NumKeyValueHeads)/t)
	r := &Roofline{
		gpu: gpu, model: m, tp: tp, opts: opts,
		flopsPerToken:   2 * layers * float64(m.LayerParams()) / t,
		flopsPerSeq:     2 * lmHead / t,
		flopsPerPair:    4 * layers * float64(m.HeadDim) * float64(m.NumAttentionHeads) / t,
		weightBytes:     dtype * (layers*float64(m.LayerParams()) + lmHead) / t,
		weightMemory:    dtype * float64(m.Params()) / t,
		kvBytesPerToken: dtype * 2 * layers * kvHeadsPerGPU * float64(m.HeadDim),
		flopRate:        gpu.PeakTFLOPS * 1e12 * opts.MFU,
		byteRate:        gpu.MemoryBandwidthGBps * 1e9 * opts.BandwidthEfficiency,
	}
	if tp > 1 {
		if gpu.InterconnectGBps <= 0 {
			return nil, fmt.Errorf("GPU %s has no interconnect bandwidth for tensor parallelism", gpu.Name)
		}
		// Two all-reduces per layer (after attention and after the MLP), ring algorithm:
		// each GPU sends and receives 2(tp-1)/tp of the activations.
		perAllReduceByte := 2 * (t - 1) / t / (gpu.InterconnectGBps * 1e9)
		r.allReducePerToken = 2 * layers * h * dtype * perAllReduceByte
		r.allReduceFixed = 2 * layers * opts.AllReduceLatency
	}
	return r, nil
}

// Name implements Model.
func (r *Roofline) Name() string {
	return fmt.Sprintf("roofline(%s x%d, %s)", r.gpu.Name, r.tp, r.model.NameOrPath)
}

// StepTime implements Model.
func (r *Roofline) StepTime(s serving.StepShape) float64 {
	tokens := float64(s.Tokens())
	if tokens == 0 {
		return 0
	}
	seqs := float64(s.PrefillSeqs + s.DecodeSeqs)
	pairs := s.PrefillAttention + float64(s.DecodeContextTokens)
	flops := r.flopsPerToken*tokens + r.flopsPerSeq*seqs + r.flopsPerPair*pairs
	bytes := r.weightBytes + r.kvBytesPerToken*(float64(s.ContextTokens)+tokens)
	t := math.Max(flops/r.flopRate, bytes/r.byteRate)
	return t + r.allReducePerToken*tokens + r.allReduceFixed + r.opts.StepOverhead
}

// KVCacheBlocks implements Capacity: what is left of each GPU's memory after weights and
// the activation reserve, in blocks of the per-GPU KV shard.
func (r *Roofline) KVCacheBlocks(blockSize int, gpuMemoryUtilization float64) (int, error) {
	if gpuMemoryUtilization <= 0 || gpuMemoryUtilization > 1 {
		return 0, fmt.Errorf("gpu memory utilization must be in (0, 1], got %g", gpuMemoryUtilization)
	}
	const gib = 1 << 30
	budget := r.gpu.MemoryGiB*gib*gpuMemoryUtilization - r.weightMemory - r.opts.ActivationReserveGiB*gib
	perBlock := r.kvBytesPerToken * float64(blockSize)
	blocks := int(budget / perBlock)
	if blocks <= 0 {
		return 0, fmt.Errorf("%s does not fit on %d x %s at %.0f%% memory: weights need %.1f GiB per GPU of %.1f GiB",
			r.model.NameOrPath, r.tp, r.gpu.Name, gpuMemoryUtilization*100, r.weightMemory/gib, r.gpu.MemoryGiB*gpuMemoryUtilization)
	}
	return blocks, nil
}

// MaxModelLen implements Capacity.
func (r *Roofline) MaxModelLen() int { return r.model.MaxPositionEmbeddings }
