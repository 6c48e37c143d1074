package gpubench

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"servelab/cuda/driver"
	"servelab/engine"
	"servelab/engine/backend"
	"servelab/sim/latency"
)

// The benchmarks' environment.
const (
	// envModel names the model directory (servelab model synth --preset llama-3.1-8b).
	envModel = "SERVELAB_GPU_MODEL"
	// envRequire makes a missing GPU or model a failure instead of a skip.
	envRequire = "SERVELAB_REQUIRE_GPU"
	// envGPU overrides the GPU table row (sim/latency's short name, e.g. h200) that the
	// device's name would select.
	envGPU = "SERVELAB_GPU"
)

// The benchmarks' shapes.
const (
	blockSize = 16
	// singleContext and batchContext are the tokens each decoding sequence has before the
	// timed steps; decodeRoom is how many steps it decodes before its positions wrap back
	// (rewriting the same KV slots costs what writing new ones does).
	singleContext = 512
	batchContext  = 1024
	batchSize     = 64
	decodeRoom    = 512
	// prefillChunk is how many prompt tokens one untimed step computes when the batch
	// benchmark fills its sequences' contexts.
	prefillChunk = 8192
)

// prefillTokens are BenchmarkPrefill's prompt lengths; 2048 is the one the target is read at.
var prefillTokens = []int{512, 2048, 8192}

// blocksPerSeq is each batch sequence's block table length.
const blocksPerSeq = (batchContext + decodeRoom + blockSize - 1) / blockSize

// numBlocks covers 64 sequences of batchContext+decodeRoom tokens, which also covers the
// single stream and the longest prefill.
const numBlocks = batchSize * blocksPerSeq

// gpuPresent reports whether the NVIDIA driver has created /dev/nvidiactl; checking it
// creates nothing.
func gpuPresent() bool {
	_, err := os.Stat("/dev/nvidiactl")
	return err == nil
}

// loaded is the model, loaded once for all the benchmarks (an 8B model takes a while).
var loaded struct {
	once   sync.Once
	b      *backend.Backend
	exec   engine.Executor
	bounds *Bounds
	err    error
}

// setup returns the loaded backend, its executor and the bounds, skipping the benchmark
// without a GPU or a model, or failing it under SERVELAB_REQUIRE_GPU=1.
func setup(b *testing.B) (*backend.Backend, engine.Executor, *Bounds) {
	b.Helper()
	required := os.Getenv(envRequire) == "1"
	missing := func(why string) {
		b.Helper()
		if required {
			b.Fatalf("%s, and %s=1 requires the GPU benchmarks to run", why, envRequire)
		}
		b.Skipf("%s (%s=1 makes this a failure)", why, envRequire)
	}
	if !gpuPresent() {
		missing("no GPU: /dev/nvidiactl does not exist")
	}
	dir := os.Getenv(envModel)
	if dir == "" {
		missing(envModel + " is not set (a model directory: servelab model synth --preset llama-3.1-8b --out DIR)")
	}
	loaded.once.Do(func() { loaded.b, loaded.exec, loaded.bounds, loaded.err = load(b, dir) })
	if loaded.err != nil {
		b.Fatal(loaded.err)
	}
	return loaded.b, loaded.exec, loaded.bounds
}

func load(b *testing.B, dir string) (*backend.Backend, engine.Executor, *Bounds, error) {
	gpu, err := tableGPU()
	if err != nil {
		return nil, nil, nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, nil, nil, err
	}
	bounds, err := NewBounds(gpu, raw, filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, nil, nil, err
	}
	start := time.Now()
	be, err := backend.Load(backend.Options{Dir: dir, Device: "cuda", DType: "bfloat16", BlockSize: blockSize, NumBlocks: numBlocks})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("loading %s on cuda in bfloat16: %w", dir, err)
	}
	b.Logf("loaded %s on cuda (bfloat16) in %.1f s; %s", dir, time.Since(start).Seconds(), bounds)
	return be, be.NewExecutor(), bounds, nil
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

// tokens are arbitrary ids below the synthesised tokenizer's 4096.
func tokens(n int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(1 + i*7919%4000)
	}
	return t
}

// seqBlocks is sequence i's block table: blocksPerSeq consecutive blocks of its own.
func seqBlocks(i int) []int32 {
	bl := make([]int32, blocksPerSeq)
	for j := range bl {
		bl[j] = int32(i*blocksPerSeq + j)
	}
	return bl
}

// fill computes the first context tokens of each sequence, in steps of at most
// prefillChunk tokens, untimed.
func fill(exec engine.Executor, seqs, context int, toks []int32) {
	per := max(1, prefillChunk/context)
	for first := 0; first < seqs; first += per {
		var batch []engine.Input
		for i := first; i < min(seqs, first+per); i++ {
			batch = append(batch, engine.Input{Tokens: toks[:context], Blocks: seqBlocks(i), Logits: true})
		}
		exec.Execute(batch)
	}
}

// decode times b.N steps of seqs sequences each decoding one token after context, and
// returns the aggregate tokens per second.
func decode(b *testing.B, exec engine.Executor, seqs, context int) float64 {
	toks := tokens(context + decodeRoom + 1)
	fill(exec, seqs, context, toks)
	batch := make([]engine.Input, seqs)
	for i := range batch {
		batch[i] = engine.Input{Blocks: seqBlocks(i), Logits: true}
	}
	b.ResetTimer()
	pos := context
	for range b.N {
		if pos == context+decodeRoom {
			pos = context
		}
		for i := range batch {
			batch[i].Tokens, batch[i].Pos = toks[pos:pos+1], pos
		}
		exec.Execute(batch)
		pos++
	}
	b.StopTimer()
	return float64(seqs*b.N) / b.Elapsed().Seconds()
}

// BenchmarkDecodeSingleStream: one sequence at context 512 decodes a token per step.
// Target: at least half the HBM roofline (weights bytes / bandwidth).
func BenchmarkDecodeSingleStream(b *testing.B) {
	_, exec, bounds := setup(b)
	tps := decode(b, exec, 1, singleContext)
	frac := bounds.SingleStreamFraction(tps)
	b.ReportMetric(tps, "tok/s")
	b.ReportMetric(frac, "roofline-frac")
	b.Logf("single-stream decode at context %d: %.1f tok/s = %.1f%% of the HBM roofline %.1f tok/s (target %.0f%%: %s)",
		singleContext, tps, 100*frac, bounds.SingleStreamTokensPerSecond(), 100*TargetSingleStreamFraction, verdict(frac >= TargetSingleStreamFraction))
}

// BenchmarkDecodeBatch64: 64 sequences at context 1024 decode a token each per step.
// Target: at least 4,000 tok/s in aggregate.
func BenchmarkDecodeBatch64(b *testing.B) {
	_, exec, bounds := setup(b)
	tps := decode(b, exec, batchSize, batchContext)
	stepBound := bounds.BatchBytesBound(DecodeShape(batchSize, batchContext))
	frac := tps / (batchSize / stepBound)
	b.ReportMetric(tps, "tok/s")
	b.ReportMetric(frac, "roofline-frac")
	b.Logf("batch-%d decode at context %d: %.0f tok/s aggregate (target %d: %s); HBM bound of the step %.2f ms = %.0f tok/s, reached %.1f%%",
		batchSize, batchContext, tps, TargetBatch64TokensPerSecond, verdict(tps >= TargetBatch64TokensPerSecond), 1e3*stepBound, batchSize/stepBound, 100*frac)
}

// BenchmarkPrefill: one prompt from position 0 per step, at 512, 2048 and 8192 tokens.
// Target (read at 2048): at least a quarter of the dense BF16 tensor-core peak.
func BenchmarkPrefill(b *testing.B) {
	for _, n := range prefillTokens {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			_, exec, bounds := setup(b)
			blocks := make([]int32, (n+blockSize-1)/blockSize)
			for j := range blocks {
				blocks[j] = int32(j)
			}
			in := []engine.Input{{Tokens: tokens(n), Blocks: blocks, Logits: true}}
			exec.Execute(in) // warm: first use of this shape's buffers
			b.ResetTimer()
			for range b.N {
				exec.Execute(in)
			}
			b.StopTimer()
			sec := b.Elapsed().Seconds() / float64(b.N)
			shape := PrefillShape(n)
			frac := bounds.PrefillFraction(shape, sec)
			b.ReportMetric(float64(n)/sec, "tok/s")
			b.ReportMetric(bounds.FLOPs(shape)/sec/1e12, "TFLOP/s")
			b.ReportMetric(frac, "peak-frac")
			b.Logf("prefill of %d tokens: %.2f ms, %.1f TFLOP/s = %.1f%% of the dense BF16 peak %.1f TFLOPS (target %.0f%%: %s)",
				n, 1e3*sec, bounds.FLOPs(shape)/sec/1e12, 100*frac, bounds.GPU.PeakTFLOPS, 100*TargetPrefillFraction, verdict(frac >= TargetPrefillFraction))
		})
	}
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}
