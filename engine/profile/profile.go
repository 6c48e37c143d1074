// Package profile measures a real engine's step time over a grid of batch shapes, so the
// simulator's linear latency model can be fitted to the machine it will predict.
//
// Steps are built directly (synthetic block tables over the engine's KV blocks) rather
// than through a workload, so every shape the simulator will meet — prefill chunks with
// and without cached context, decode batches over short and long contexts, and mixes —
// is measured deliberately. A step's shape is computed by serving.Step.Add, exactly as the
// engine's scheduler and the simulator compute it.
package profile

import (
	"fmt"
	"slices"
	"time"

	"servelab/engine"
	"servelab/serving"
)

// Config bounds the grid to what the engine can hold.
type Config struct {
	// MaxModelLen and NumBlocks/BlockSize are the engine's limits.
	MaxModelLen int
	NumBlocks   int
	BlockSize   int
	// MaxNumBatchedTokens and MaxNumSeqs are the batch policy's step limits.
	MaxNumBatchedTokens int
	MaxNumSeqs          int
	// Repeats is how often each shape is timed; the median is kept. 0 means 3.
	Repeats int
	// Quick measures a smaller grid (for tests).
	Quick bool
	// GPU measures the grid a GPU serves: prompts and contexts to 8192 tokens, decode
	// batches to 256 (the CPU grid stops at 1024 tokens and 64 sequences, which a GPU
	// computes in a few milliseconds). Shapes past the engine's limits are left out as
	// always, so the batch policy's max_num_batched_tokens and the KV cache bound it.
	GPU bool
	// Progress, if set, is called after each shape.
	Progress func(done, total int)
}

// Point is one measured step.
type Point struct {
	Shape   serving.StepShape
	Seconds float64
}

// A chunk is one sequence's part of a planned step.
type chunk struct {
	context, tokens int
	decode          bool
}

// grid lists the steps to measure.
func grid(cfg Config) [][]chunk {
	prefill := []int{8, 32, 64, 128, 256, 512, 1024}
	contexts := []int{0, 128, 512, 1024}
	decodeBatches := []int{1, 2, 4, 8, 16, 32, 64}
	decodeContexts := []int{16, 128, 512, 1024}
	mixedPrefill, mixedBatches := prefill[:4], decodeBatches[:4]
	switch {
	case cfg.Quick:
		prefill, contexts = []int{8, 32, 96}, []int{0, 64}
		decodeBatches, decodeContexts = []int{1, 3, 8}, []int{16, 80}
		mixedPrefill, mixedBatches = prefill, decodeBatches
	case cfg.GPU:
		prefill = []int{16, 64, 256, 512, 1024, 2048, 4096, 8192}
		contexts = []int{0, 512, 2048, 8192}
		decodeBatches = []int{1, 2, 4, 8, 16, 32, 64, 128, 256}
		decodeContexts = []int{128, 512, 2048, 4096}
		mixedPrefill, mixedBatches = []int{256, 1024, 4096}, []int{1, 16, 64}
	}
	var steps [][]chunk
	fits := func(c []chunk) bool {
		tokens, seqs, blocks := 0, len(c), 0
		for _, ch := range c {
			if ch.context+ch.tokens+1 > cfg.MaxModelLen {
				return false
			}
			tokens += ch.tokens
			blocks += (ch.context + ch.tokens + cfg.BlockSize - 1) / cfg.BlockSize
		}
		return tokens <= cfg.MaxNumBatchedTokens && seqs <= cfg.MaxNumSeqs && blocks <= cfg.NumBlocks
	}
	add := func(c []chunk) {
		if fits(c) {
			steps = append(steps, c)
		}
	}
	for _, p := range prefill {
		for _, ctx := range contexts {
			add([]chunk{{context: ctx, tokens: p}})
		}
		// Two prompts in one step: per-sequence costs separate from per-token ones.
		add([]chunk{{tokens: p / 2}, {tokens: p / 2}})
	}
	for _, b := range decodeBatches {
		for _, ctx := range decodeContexts {
			c := make([]chunk, b)
			for i := range c {
				c[i] = chunk{context: ctx, tokens: 1, decode: true}
			}
			add(c)
		}
	}
	// Mixed steps, as continuous batching runs them: a prefill chunk beside decodes.
	for _, p := range mixedPrefill {
		for _, b := range mixedBatches {
			c := []chunk{{context: 0, tokens: p}}
			for range b {
				c = append(c, chunk{context: decodeContexts[1], tokens: 1, decode: true})
			}
			add(c)
		}
	}
	return steps
}

// Measure times every step of the grid on exec and returns one point per step.
func Measure(exec engine.Executor, cfg Config) ([]Point, error) {
	if cfg.BlockSize <= 0 || cfg.NumBlocks <= 0 || cfg.MaxModelLen <= 0 || cfg.MaxNumBatchedTokens <= 0 || cfg.MaxNumSeqs <= 0 {
		return nil, fmt.Errorf("profile: incomplete limits %+v", cfg)
	}
	repeats := cfg.Repeats
	if repeats <= 0 {
		repeats = 3
	}
	steps := grid(cfg)
	if len(steps) < 6 {
		return nil, fmt.Errorf("profile: only %d batch shapes fit the engine's limits (max model len %d, %d blocks of %d, %d batched tokens, %d seqs)",
			len(steps), cfg.MaxModelLen, cfg.NumBlocks, cfg.BlockSize, cfg.MaxNumBatchedTokens, cfg.MaxNumSeqs)
	}
	tokens := make([]int32, cfg.MaxModelLen)
	for i := range tokens {
		// Arbitrary ids below any real vocabulary's size.
		tokens[i] = int32(1 + i*7919%200)
	}
	_, greedy := exec.(engine.TokenExecutor)
	// Warm caches and goroutines once.
	warm := buildStep(steps[0], cfg.BlockSize, tokens, greedy)
	if err := execute(exec, warm.inputs); err != nil {
		return nil, err
	}

	points := make([]Point, 0, len(steps))
	times := make([]float64, repeats)
	for i, c := range steps {
		st := buildStep(c, cfg.BlockSize, tokens, greedy)
		for r := range times {
			start := time.Now()
			if err := execute(exec, st.inputs); err != nil {
				return nil, err
			}
			times[r] = time.Since(start).Seconds()
		}
		slices.Sort(times)
		points = append(points, Point{Shape: st.shape, Seconds: times[len(times)/2]})
		if cfg.Progress != nil {
			cfg.Progress(i+1, len(steps))
		}
	}
	return points, nil
}

// execute runs one step; an executor whose steps can fail (a GPU's) reports its error.
// A TokenExecutor (the GPU's) runs it through ExecuteTokens with every input Greedy
// (Measure has buildStep mark them): the step the engine runs for greedy requests (real/bench sends temperature 0),
// their argmax taken on the device and only the tokens copied back, as vLLM samples on the
// GPU. Timing Execute instead would add a copy of every logits row that neither engine
// makes (131 MB a step at batch 256 for a vocabulary of 128256).
func execute(exec engine.Executor, inputs []engine.Input) error {
	if tx, ok := exec.(engine.TokenExecutor); ok {
		if _, _, err := tx.ExecuteTokens(inputs); err != nil {
			return fmt.Errorf("profile: step of %d sequences: %w", len(inputs), err)
		}
		return nil
	}
	if fx, ok := exec.(engine.FallibleExecutor); ok {
		if _, err := fx.ExecuteErr(inputs); err != nil {
			return fmt.Errorf("profile: step of %d sequences: %w", len(inputs), err)
		}
		return nil
	}
	exec.Execute(inputs)
	return nil
}

type builtStep struct {
	inputs []engine.Input
	shape  serving.StepShape
}

// buildStep lays the step's sequences over consecutive blocks and computes its shape the
// way the scheduler does. Context positions are written by the step itself when absent
// from the cache; the model reads whatever the blocks hold, which costs the same. greedy
// marks every sequence Greedy (for a TokenExecutor: see execute).
func buildStep(c []chunk, blockSize int, tokens []int32, greedy bool) builtStep {
	var st serving.Step
	var out builtStep
	next := int32(0)
	for _, ch := range c {
		total := ch.context + ch.tokens
		n := (total + blockSize - 1) / blockSize
		blocks := make([]int32, n)
		for i := range blocks {
			blocks[i] = next
			next++
		}
		seq := &serving.Seq{Req: &serving.Request{PromptTokens: total}, NumComputed: ch.context}
		if ch.decode {
			seq.Req.PromptTokens = ch.context
			seq.NumOutput = 1
		}
		st.Add(seq, ch.tokens)
		out.inputs = append(out.inputs, engine.Input{
			Tokens: tokens[ch.context:total],
			Pos:    ch.context,
			Blocks: blocks,
			Logits: true,
			Greedy: greedy,
		})
	}
	out.shape = st.Shape
	return out
}
