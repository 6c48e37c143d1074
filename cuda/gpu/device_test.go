package gpu

import (
	"os"
	"servelab/internal/gputest"

	"testing"
)

// TestForwardMatchesCPU runs the 15m and 110m presets (random weights, float32 files) on
// the GPU against the CPU engine, the steps of compareWithCPU: a prefill chunk and a whole
// prompt, then the chunk's rest, a decode and a prefix-cache hit in one batch, then 32
// decode steps of three sequences. float32: greedy tokens identical at every step, each
// logits row within 1e-4 relative RMS error. bfloat16: each logits row within 5% relative
// RMS error of the CPU's (float32 weights). The first steps run again with greedy rows
// (ForwardTokens): sl_argmax's tokens are sampling.Argmax of Forward's rows.
func TestForwardMatchesCPU(t *testing.T) {
	gputest.Require(t)
	for _, name := range []string{"15m", "110m"} {
		dir := synth(t, preset(t, name), 11)
		for _, dtype := range []string{Float32, BFloat16} {
			t.Run(name+"/"+dtype, func(t *testing.T) {
				b, err := Load(Options{Dir: dir, DType: dtype, NumBlocks: 64, MaxNumBatchedTokens: 256, MaxNumSeqs: 8})
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					if err := b.Close(); err != nil {
						t.Error(err)
					}
				}()
				info := b.Info()
				t.Logf("%s on %s (%s), weights %d bytes, KV %d bytes", name, info.Device, info.Image, info.WeightBytes, info.KVBytes)
				compareWithCPU(t, dir, b)
			})
		}
	}
}

// envCheckModel names a model directory of a real shape for TestForwardMatchesCPUOnModel
// (scripts/gpu-check.sh synthesises llama-3.2-1b for it).
const envCheckModel = "SERVELAB_GPU_CHECK_MODEL"

// TestForwardMatchesCPUOnModel is TestForwardMatchesCPU on the model in
// $SERVELAB_GPU_CHECK_MODEL: a real shape (llama-3.2-1b: vocabulary 128256, grouped-query
// attention 32/8, Llama 3.1 rope scaling, tied embeddings), which neither the presets nor
// the CPU emulation of the kernels reach.
func TestForwardMatchesCPUOnModel(t *testing.T) {
	gputest.Require(t)
	dir := os.Getenv(envCheckModel)
	if dir == "" {
		if gputest.Required() {
			t.Fatalf("SERVELAB_REQUIRE_GPU=1 and %s is not set (a model directory: servelab model synth --preset llama-3.2-1b --out DIR)", envCheckModel)
		}
		t.Skipf("%s is not set (a model directory: servelab model synth --preset llama-3.2-1b --out DIR)", envCheckModel)
	}
	for _, dtype := range []string{Float32, BFloat16} {
		t.Run(dtype, func(t *testing.T) {
			b, err := Load(Options{Dir: dir, DType: dtype, NumBlocks: 64, MaxNumBatchedTokens: 256, MaxNumSeqs: 8})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := b.Close(); err != nil {
					t.Error(err)
				}
			}()
			info := b.Info()
			t.Logf("%s on %s (%s), weights %d bytes, KV %d bytes", dir, info.Device, info.Image, info.WeightBytes, info.KVBytes)
			compareWithCPU(t, dir, b)
		})
	}
}
