// Package gpubench benchmarks the CUDA backend against issue 15's targets on a Llama-3.1-8B
// shape in bfloat16 (servelab model synth --preset llama-3.1-8b), through the engine's own
// path: engine/backend.Load with Device "cuda" and its executor, batches of engine.Input
// over distinct KV blocks.
//
//   - BenchmarkDecodeSingleStream: one sequence decoding; tok/s and its fraction of the
//     HBM-bandwidth roofline (streamed weight bytes / bandwidth), target at least 0.5.
//   - BenchmarkDecodeBatch64: 64 sequences decoding together; aggregate tok/s, target at
//     least 4,000.
//   - BenchmarkPrefill: one prompt per step; FLOP/s and its fraction of the dense BF16
//     tensor-core peak, target at least 0.25.
//
// The benchmarks (bench_test.go) need a GPU and the model directory in SERVELAB_GPU_MODEL;
// they skip without either, and fail when SERVELAB_REQUIRE_GPU=1 (scripts/gpu-check.sh sets
// it). The bounds they report against (this file) are the simulator's own: the GPU's
// bandwidth and peak from sim/latency's GPU table and the roofline's count of a step's bytes
// and FLOPs, so a benchmark and a simulation of the same GPU use the same constants.
package gpubench

import (
	"fmt"

	"servelab/serving"
	"servelab/sim/latency"
)

// The targets for the Llama-3.1-8B shape in bfloat16 on an H200.
const (
	// TargetSingleStreamFraction is single-stream decode's minimum fraction of the HBM
	// roofline.
	TargetSingleStreamFraction = 0.5
	// TargetBatch64TokensPerSecond is batch-64 decode's minimum aggregate rate.
	TargetBatch64TokensPerSecond = 4000
	// TargetPrefillFraction is prefill's minimum fraction of the dense BF16 peak.
	TargetPrefillFraction = 0.25
)

// Bounds are one model's roofline bounds on one GPU.
type Bounds struct {
	GPU latency.GPU
	r   *latency.Roofline
}

// NewBounds builds the bounds of the model whose config.json is raw (source names it in
// errors) on gpu, with the simulator's roofline (one GPU, its default options: the
// efficiencies and overheads do not enter the bounds).
func NewBounds(gpu latency.GPU, raw []byte, source string) (*Bounds, error) {
	m, err := latency.ParseModelConfig(raw, source)
	if err != nil {
		return nil, err
	}
	r, err := latency.NewRoofline(gpu, m, 1, latency.DefaultRooflineOptions())
	if err != nil {
		return nil, err
	}
	return &Bounds{GPU: gpu, r: r}, nil
}

// WeightBytes is what every decode step reads: the weights the roofline streams.
func (b *Bounds) WeightBytes() float64 { return b.r.StreamedWeightBytes() }

// SingleStreamTokensPerSecond is the HBM roofline of single-stream decode: bandwidth over
// the weight bytes.
func (b *Bounds) SingleStreamTokensPerSecond() float64 {
	return b.GPU.MemoryBandwidthGBps * 1e9 / b.WeightBytes()
}

// SingleStreamFraction is a measured single-stream decode rate's fraction of the roofline.
func (b *Bounds) SingleStreamFraction(tokensPerSecond float64) float64 {
	return tokensPerSecond / b.SingleStreamTokensPerSecond()
}

// PeakFLOPS is the GPU's dense BF16 tensor-core peak in FLOP/s.
func (b *Bounds) PeakFLOPS() float64 { return b.GPU.PeakTFLOPS * 1e12 }

// FLOPs is the work of step s as the roofline counts it.
func (b *Bounds) FLOPs(s serving.StepShape) float64 { return b.r.FLOPs(s) }

// PrefillFraction is the fraction of the peak that computing step s in seconds reaches.
func (b *Bounds) PrefillFraction(s serving.StepShape, seconds float64) float64 {
	return b.FLOPs(s) / seconds / b.PeakFLOPS()
}

// BatchBytesBound is the HBM bound of decode step s in seconds: its weights and KV bytes
// over the bandwidth.
func (b *Bounds) BatchBytesBound(s serving.StepShape) float64 {
	return b.r.Bytes(s) / (b.GPU.MemoryBandwidthGBps * 1e9)
}

// DecodeShape is a step of batch sequences each decoding one token after context tokens,
// as the scheduler computes it.
func DecodeShape(batch, context int) serving.StepShape {
	var st serving.Step
	for range batch {
		st.Add(&serving.Seq{Req: &serving.Request{PromptTokens: context}, NumComputed: context, NumOutput: 1}, 1)
	}
	return st.Shape
}

// PrefillShape is a step computing one prompt of tokens from position 0.
func PrefillShape(tokens int) serving.StepShape {
	var st serving.Step
	st.Add(&serving.Seq{Req: &serving.Request{PromptTokens: tokens}}, tokens)
	return st.Shape
}

// String summarises the bounds, for logs.
func (b *Bounds) String() string {
	return fmt.Sprintf("%s: %.0f GB/s, %.1f TFLOPS dense BF16; weights streamed per step %.2f GB: single-stream decode roofline %.1f tok/s",
		b.GPU.Description, b.GPU.MemoryBandwidthGBps, b.GPU.PeakTFLOPS, b.WeightBytes()/1e9, b.SingleStreamTokensPerSecond())
}
