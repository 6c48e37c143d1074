package gpu

import (
	"servelab/internal/gputest"

	"testing"
)

// TestForwardMatchesCPU runs the 15m and 110m presets (random weights, float32 files) on
// the GPU against the CPU engine, the steps of compareWithCPU: a prefill chunk and a whole
// prompt, then the chunk's rest, a decode and a prefix-cache hit in one batch, then 32
// decode steps of three sequences. float32: greedy tokens identical at every step, each
// logits row within 1e-4 relative RMS error. bfloat16: each logits row within 5% relative
// RMS error of the CPU's (float32 weights).
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
				compareWithCPU(t, dir, b.Forward, b.NumBlocks(), b.BlockSize(), info.DType)
			})
		}
	}
}
