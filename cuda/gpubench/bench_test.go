package gpubench

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"servelab/internal/gputest"
	"slices"
	"sync"
	"testing"
	"time"

	"servelab/cuda/driver"
	"servelab/engine"
	"servelab/engine/backend"
	"servelab/engine/model"
	"servelab/engine/sampling"
	"servelab/sim/latency"
)

// The benchmarks' environment.
const (
	// envModel names the model directory (servelab model synth --preset llama-3.1-8b).
	envModel = "SERVELAB_GPU_MODEL"
	// envGPU overrides the GPU table row (sim/latency's short name, e.g. h200) that the
	// device's name would select.
	envGPU = "SERVELAB_GPU"
)

// shape is a benchmark run's sizes: the GPU's (gpuShape), or a tiny model's on the CPU
// (bench_cpu_test.go).
type shape struct {
	blockSize int
	// singleContext and batchContext are the tokens each decoding sequence has before the
	// timed steps; decodeRoom is how many steps it decodes before its positions wrap back
	// (rewriting the same KV slots costs what writing new ones does).
	singleContext, batchContext, batch, decodeRoom int
	// prefillChunk is the most prompt tokens one untimed step computes while the batch
	// benchmark fills its sequences' contexts.
	prefillChunk int
	// prefill are BenchmarkPrefill's prompt lengths; the target is read at 2048.
	prefill []int
}

// gpuShape: the single stream at context 512, 64 sequences at context 1024, prompts of
// 512 and 2048 tokens. No 8192: the prefill attention kernel is a warp per query over its
// whole context (16x 2048's work at 8192), estimated at seconds a step for the 8B, so the
// device run's 3 x 21 timed steps of it would take minutes of the 4 its benchmarks have;
// servelab profile's GPU grid times 8192-token prompts.
var gpuShape = shape{blockSize: 16, singleContext: 512, batchContext: 1024, batch: 64, decodeRoom: 512, prefillChunk: 8192,
	prefill: []int{512, 2048}}

// blocksPerSeq is each decoding sequence's block table length.
func (s shape) blocksPerSeq() int {
	return (max(s.singleContext, s.batchContext) + s.decodeRoom + s.blockSize - 1) / s.blockSize
}

// numBlocks covers the batch's sequences, which also covers the single stream and (checked)
// the longest prompt.
func (s shape) numBlocks() int {
	n := s.batch * s.blocksPerSeq()
	for _, p := range s.prefill {
		n = max(n, (p+s.blockSize-1)/s.blockSize)
	}
	return n
}

// loaded is the model, loaded once for all the benchmarks (an 8B model takes a while).
var loaded struct {
	once   sync.Once
	vocab  int
	exec   engine.Executor
	bounds *Bounds
	err    error
}

// setup returns the loaded model's executor, its vocabulary and the bounds, skipping the
// benchmark without a GPU or a model, or failing it under SERVELAB_REQUIRE_GPU=1.
func setup(b *testing.B) (engine.Executor, int, *Bounds) {
	b.Helper()
	gputest.Require(b)
	missing := func(why string) {
		b.Helper()
		if gputest.Required() {
			b.Fatalf("%s, and %s=1 requires the GPU benchmarks to run", why, gputest.EnvRequire)
		}
		b.Skipf("%s (%s=1 makes this a failure)", why, gputest.EnvRequire)
	}
	dir := os.Getenv(envModel)
	if dir == "" {
		missing(envModel + " is not set (a model directory: servelab model synth --preset llama-3.1-8b --out DIR)")
	}
	loaded.once.Do(func() {
		gpu, err := tableGPU()
		if err != nil {
			loaded.err = err
			return
		}
		loaded.exec, loaded.vocab, loaded.bounds, loaded.err = load(b, dir, "cuda", gpu, gpuShape)
	})
	if loaded.err != nil {
		b.Fatal(loaded.err)
	}
	return loaded.exec, loaded.vocab, loaded.bounds
}

// load loads the model in dir on device (in bfloat16 on cuda) with the KV blocks sh needs, and its
// bounds on gpu.
func load(tb testing.TB, dir, device string, gpu latency.GPU, sh shape) (engine.Executor, int, *Bounds, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, 0, nil, err
	}
	cfg, err := model.ParseConfig(raw)
	if err != nil {
		return nil, 0, nil, err
	}
	bounds, err := NewBounds(gpu, raw, filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, 0, nil, err
	}
	dtype := "" // the CPU computes in float32
	if device == "cuda" {
		dtype = "bfloat16"
	}
	start := time.Now()
	be, err := backend.Load(backend.Options{Dir: dir, Device: device, DType: dtype, BlockSize: sh.blockSize, NumBlocks: sh.numBlocks()})
	if err != nil {
		return nil, 0, nil, fmt.Errorf("loading %s on %s (dtype %q): %w", dir, device, dtype, err)
	}
	tb.Logf("loaded %s on %s (dtype %q) in %.1f s; %s", dir, device, dtype, time.Since(start).Seconds(), bounds)
	return be.NewExecutor(), cfg.Vocab, bounds, nil
}

// tableGPU is the GPU table's row for device 0: SERVELAB_GPU's, or the one whose
// device_names has the name the driver reports.
func tableGPU() (latency.GPU, error) {
	if name := os.Getenv(envGPU); name != "" {
		return latency.LookupGPU(name)
	}
	d, err := driver.Load()
	if err != nil {
		return latency.GPU{}, err
	}
	if err := d.Init(); err != nil {
		return latency.GPU{}, err
	}
	dev, err := d.DeviceGet(0)
	if err != nil {
		return latency.GPU{}, err
	}
	name, err := d.DeviceName(dev)
	if err != nil {
		return latency.GPU{}, err
	}
	g, err := latency.LookupGPUByDeviceName(name)
	if err != nil {
		return latency.GPU{}, fmt.Errorf("%w; set %s to a row of the table (%v) to compare against it", err, envGPU, latency.GPUNames())
	}
	return g, nil
}

// tokens are n arbitrary ids in [1, vocab), also below the synthesised tokenizer's 4096.
func tokens(n, vocab int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(1 + i*7919%(min(vocab, 4096)-1))
	}
	return t
}

// seqBlocks is sequence i's block table: blocksPerSeq consecutive blocks of its own.
func (s shape) seqBlocks(i int) []int32 {
	bl := make([]int32, s.blocksPerSeq())
	for j := range bl {
		bl[j] = int32(i*len(bl) + j)
	}
	return bl
}

// execute runs one step and checks that it returned a finite logits row of the model's
// vocabulary for every input: a benchmark of a backend computing nonsense fails. For a
// batch with Greedy inputs (a TokenExecutor's: see greedy) it runs the step again as the
// timed steps do and checks that each greedy row's token is sampling.Argmax of the row
// just checked (the same step computes the same logits again).
func execute(b *testing.B, exec engine.Executor, vocab int, batch []engine.Input) {
	out := exec.Execute(batch)
	if len(out) != len(batch) {
		b.Fatalf("a step of %d inputs returned %d logits rows", len(batch), len(out))
	}
	want := make([]int32, len(out))
	for i, row := range out {
		if len(row) != vocab {
			b.Fatalf("logits row %d has %d values, want the vocabulary's %d", i, len(row), vocab)
		}
		for _, v := range row {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				b.Fatalf("logits row %d holds %v", i, v)
			}
		}
		want[i] = sampling.Argmax(row)
	}
	tx, ok := exec.(engine.TokenExecutor)
	if !ok || !slices.ContainsFunc(batch, func(in engine.Input) bool { return in.Greedy }) {
		return
	}
	logits, tokens, err := tx.ExecuteTokens(batch)
	if err != nil {
		b.Fatal(err)
	}
	if len(logits) != len(batch) || len(tokens) != len(batch) {
		b.Fatalf("ExecuteTokens of %d inputs returned %d logits rows and %d tokens", len(batch), len(logits), len(tokens))
	}
	for i, in := range batch {
		if in.Greedy && tokens[i] != want[i] {
			b.Fatalf("greedy row %d: token %d, want the argmax of its logits %d", i, tokens[i], want[i])
		}
	}
}

// greedy says whether the timed steps ask for greedy tokens: with a TokenExecutor (the
// GPU's), as the engine runs greedy requests (real/bench sends temperature 0) and vLLM,
// whose throughput the targets come from, samples on the GPU. Other executors get no
// Greedy input, as from the engine.
func greedy(exec engine.Executor) bool {
	_, ok := exec.(engine.TokenExecutor)
	return ok
}

// step runs one timed step: through ExecuteTokens for a TokenExecutor (batch's inputs
// Greedy, so the argmax is taken on the device and only the tokens are copied back), else
// Execute (every logits row copied back).
func step(b *testing.B, exec engine.Executor, batch []engine.Input) {
	if tx, ok := exec.(engine.TokenExecutor); ok {
		if _, _, err := tx.ExecuteTokens(batch); err != nil {
			b.Fatal(err)
		}
		return
	}
	exec.Execute(batch)
}

// fill computes the first context tokens of each of seqs sequences, in steps of at most
// prefillChunk tokens, untimed.
func (s shape) fill(b *testing.B, exec engine.Executor, vocab, seqs, context int, toks []int32) {
	per := max(1, s.prefillChunk/context)
	for first := 0; first < seqs; first += per {
		var batch []engine.Input
		for i := first; i < min(seqs, first+per); i++ {
			batch = append(batch, engine.Input{Tokens: toks[:context], Blocks: s.seqBlocks(i), Logits: true})
		}
		execute(b, exec, vocab, batch)
	}
}

// decode times b.N steps of seqs sequences each decoding one token after context, and
// returns the aggregate tokens per second. The first step's logits are checked, the timed
// ones not; they run as the engine runs greedy requests (step): on the GPU the argmax on
// the device and the tokens copied back, elsewhere every logits row.
func (s shape) decode(b *testing.B, exec engine.Executor, vocab, seqs, context int) float64 {
	toks := tokens(context+s.decodeRoom+1, vocab)
	s.fill(b, exec, vocab, seqs, context, toks)
	batch := make([]engine.Input, seqs)
	for i := range batch {
		batch[i] = engine.Input{Tokens: toks[context : context+1], Pos: context, Blocks: s.seqBlocks(i), Logits: true, Greedy: greedy(exec)}
	}
	execute(b, exec, vocab, batch)
	b.ResetTimer()
	pos := context
	for range b.N {
		if pos == context+s.decodeRoom {
			pos = context
		}
		for i := range batch {
			batch[i].Tokens, batch[i].Pos = toks[pos:pos+1], pos
		}
		step(b, exec, batch)
		pos++
	}
	b.StopTimer()
	return float64(seqs*b.N) / b.Elapsed().Seconds()
}

// singleStream is BenchmarkDecodeSingleStream's body.
func (s shape) singleStream(b *testing.B, exec engine.Executor, vocab int, bounds *Bounds) {
	tps := s.decode(b, exec, vocab, 1, s.singleContext)
	frac := bounds.SingleStreamFraction(tps)
	b.ReportMetric(tps, "tok/s")
	b.ReportMetric(frac, "roofline-frac")
	b.Logf("single-stream decode at context %d: %.1f tok/s = %.1f%% of the HBM roofline %.1f tok/s (target %.0f%%: %s)",
		s.singleContext, tps, 100*frac, bounds.SingleStreamTokensPerSecond(), 100*TargetSingleStreamFraction, verdict(frac >= TargetSingleStreamFraction))
}

// batchDecode is BenchmarkDecodeBatch64's body.
func (s shape) batchDecode(b *testing.B, exec engine.Executor, vocab int, bounds *Bounds) {
	tps := s.decode(b, exec, vocab, s.batch, s.batchContext)
	stepBound := bounds.BatchBytesBound(DecodeShape(s.batch, s.batchContext))
	frac := tps / (float64(s.batch) / stepBound)
	b.ReportMetric(tps, "tok/s")
	b.ReportMetric(frac, "roofline-frac")
	b.Logf("batch-%d decode at context %d: %.0f tok/s aggregate (target %d: %s); HBM bound of the step %.2f ms = %.0f tok/s, reached %.1f%%",
		s.batch, s.batchContext, tps, TargetBatch64TokensPerSecond, verdict(tps >= TargetBatch64TokensPerSecond), 1e3*stepBound, float64(s.batch)/stepBound, 100*frac)
}

// prefillRun is BenchmarkPrefill's body for a prompt of n tokens.
func (s shape) prefillRun(b *testing.B, exec engine.Executor, vocab int, bounds *Bounds, n int) {
	blocks := make([]int32, (n+s.blockSize-1)/s.blockSize)
	for j := range blocks {
		blocks[j] = int32(j)
	}
	in := []engine.Input{{Tokens: tokens(n, vocab), Blocks: blocks, Logits: true, Greedy: greedy(exec)}}
	execute(b, exec, vocab, in) // checked, and warm: the first use of this shape's buffers
	b.ResetTimer()
	for range b.N {
		step(b, exec, in)
	}
	b.StopTimer()
	sec := b.Elapsed().Seconds() / float64(b.N)
	sh := PrefillShape(n)
	frac := bounds.PrefillFraction(sh, sec)
	b.ReportMetric(float64(n)/sec, "tok/s")
	b.ReportMetric(bounds.FLOPs(sh)/sec/1e12, "TFLOP/s")
	b.ReportMetric(frac, "peak-frac")
	b.Logf("prefill of %d tokens: %.2f ms, %.1f TFLOP/s = %.1f%% of the dense BF16 peak %.1f TFLOPS (target %.0f%%: %s)",
		n, 1e3*sec, bounds.FLOPs(sh)/sec/1e12, 100*frac, bounds.GPU.PeakTFLOPS, 100*TargetPrefillFraction, verdict(frac >= TargetPrefillFraction))
}

// BenchmarkDecodeSingleStream: one sequence at context 512 decodes a token per step.
// Target: at least half the HBM roofline (weights bytes / bandwidth).
func BenchmarkDecodeSingleStream(b *testing.B) {
	exec, vocab, bounds := setup(b)
	gpuShape.singleStream(b, exec, vocab, bounds)
}

// BenchmarkDecodeBatch64: 64 sequences at context 1024 decode a token each per step.
// Target: at least 4,000 tok/s in aggregate.
func BenchmarkDecodeBatch64(b *testing.B) {
	exec, vocab, bounds := setup(b)
	gpuShape.batchDecode(b, exec, vocab, bounds)
}

// BenchmarkPrefill: one prompt from position 0 per step, at 512 and 2048 tokens.
// Target (read at 2048): at least a quarter of the dense BF16 tensor-core peak.
func BenchmarkPrefill(b *testing.B) {
	for _, n := range gpuShape.prefill {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			exec, vocab, bounds := setup(b)
			gpuShape.prefillRun(b, exec, vocab, bounds, n)
		})
	}
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}
