package model

import (
	"testing"
	"time"

	"servelab/engine/cpu"
	"servelab/engine/modelfile"
)

// benchModel writes a random model of the preset into a temporary directory and loads it.
func benchModel(b *testing.B, preset string) *Model {
	b.Helper()
	spec, err := modelfile.Preset(preset)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := modelfile.Write(dir, spec, modelfile.RandomWeights(spec, 1)); err != nil {
		b.Fatal(err)
	}
	m, err := Load(dir, cpu.NewPool(0))
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// benchContext is the context length the decode benchmarks run at.
const benchContext = 128

// BenchmarkForward measures steps of the 15m and 110m presets (random weights, tied
// classifier, vocabulary 32000), reporting tokens per second:
//
//   - decode-1: one sequence decoding one token at context 128;
//   - decode-16: 16 sequences each decoding one token at context 128 (aggregate tok/s);
//   - prefill-128: one 128-token prompt in one step (logits of its last token only).
func BenchmarkForward(b *testing.B) {
	for _, preset := range []string{"15m", "110m"} {
		b.Run(preset, func(b *testing.B) {
			m := benchModel(b, preset)
			const bs = 16
			shared := benchContext / bs
			cache := m.NewKVCache(shared+16, bs)
			r := m.NewRunner(cache)
			prompt := make([]int32, benchContext)
			for i := range prompt {
				prompt[i] = int32(1 + (i*7919)%(m.Config.Vocab-1))
			}
			// All 16 sequences share the prompt's blocks [0, shared) (a prefix-cache hit)
			// and decode position benchContext into a block of their own.
			tables := make([][]int32, 16)
			for i := range tables {
				for k := range shared {
					tables[i] = append(tables[i], int32(k))
				}
				tables[i] = append(tables[i], int32(shared+i))
			}
			r.Forward([]SeqInput{{Tokens: prompt, Blocks: tables[0]}})
			decode := func(b *testing.B, n int) {
				batch := make([]SeqInput, n)
				for i := range batch {
					batch[i] = SeqInput{Tokens: []int32{prompt[i]}, Pos: benchContext, Blocks: tables[i], Logits: true}
				}
				r.Forward(batch) // warm up the buffers
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for b.Loop() {
					r.Forward(batch)
				}
				b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "tok/s")
			}
			b.Run("decode-1", func(b *testing.B) { decode(b, 1) })
			b.Run("decode-16", func(b *testing.B) { decode(b, 16) })
			b.Run("prefill-128", func(b *testing.B) {
				// Prefill rewrites the shared blocks with the same keys and values.
				batch := []SeqInput{{Tokens: prompt, Blocks: tables[0], Logits: true}}
				r.Forward(batch)
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for b.Loop() {
					r.Forward(batch)
				}
				b.ReportMetric(float64(benchContext*b.N)/time.Since(start).Seconds(), "tok/s")
			})
		})
	}
}
