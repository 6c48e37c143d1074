package gpubench

import (
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"

	"servelab/engine"
	"servelab/engine/modelfile"
	"servelab/engine/safetensors"
	"servelab/engine/sampling"
	"servelab/engine/tokenizer"
	"servelab/sim/latency"
)

// tinyModel writes a small Llama 3.1-style model (GQA, untied, llama3 rope_scaling,
// bfloat16) with a tokenizer, as servelab model synth writes the real shapes.
func tinyModel(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	spec := modelfile.Spec{Dim: 64, Hidden: 160, Layers: 2, Heads: 8, KVHeads: 2, Vocab: 512, MaxSeqLen: 2048, RopeTheta: 500000,
		NormEps: 1e-5, BOS: 1, EOS: 2, DType: safetensors.BF16,
		RopeScaling: &modelfile.RopeScaling{Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 256}}
	if _, err := modelfile.WriteRandom(dir, spec, 1, modelfile.RandomOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, cfg, err := tokenizer.Train(tokenizer.DefaultCorpus(), tokenizer.TrainConfig{VocabSize: 512, Kind: "byte-level",
		Special: []string{"<|begin_of_text|>", "<|end_of_text|>"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tokenizer.json": tok, "tokenizer_config.json": cfg} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// withBenchtime runs f with -test.benchtime set to v, as testing.Benchmark reads it.
func withBenchtime(t *testing.T, v string, f func()) {
	t.Helper()
	old := flag.Lookup("test.benchtime").Value.String()
	if err := flag.Set("test.benchtime", v); err != nil {
		t.Fatal(err)
	}
	defer flag.Set("test.benchtime", old)
	f()
}

func relNear(got, want float64) bool { return math.Abs(got-want) <= 1e-9*math.Abs(want) }

// The benchmarks' bodies run here on the CPU backend over a tiny model at small sizes: the
// harness (block tables, positions wrapping round, logits checked, metrics against the
// h200 bounds) is what runs on the GPU, with the device and the sizes changed.
func TestBenchmarkBodiesOnCPU(t *testing.T) {
	h200, err := latency.LookupGPU("h200")
	if err != nil {
		t.Fatal(err)
	}
	sh := shape{blockSize: 16, singleContext: 24, batchContext: 40, batch: 4, decodeRoom: 8, prefillChunk: 64, prefill: []int{48}}
	exec, vocab, bounds, err := load(t, tinyModel(t), "cpu", h200, sh)
	if err != nil {
		t.Fatal(err)
	}
	if vocab != 512 {
		t.Fatalf("vocab %d", vocab)
	}
	withBenchtime(t, "20x", func() { // 20 steps: the 8-step decode room wraps round twice
		single := testing.Benchmark(func(b *testing.B) { sh.singleStream(b, exec, vocab, bounds) })
		if tps := single.Extra["tok/s"]; single.N != 20 || !(tps > 0) || !relNear(single.Extra["roofline-frac"], tps/bounds.SingleStreamTokensPerSecond()) {
			t.Errorf("single stream: N %d, metrics %v", single.N, single.Extra)
		}
		batch := testing.Benchmark(func(b *testing.B) { sh.batchDecode(b, exec, vocab, bounds) })
		stepBound := bounds.BatchBytesBound(DecodeShape(4, 40))
		if tps := batch.Extra["tok/s"]; batch.N != 20 || !(tps > 0) || !relNear(batch.Extra["roofline-frac"], tps*stepBound/4) {
			t.Errorf("batch: N %d, metrics %v", batch.N, batch.Extra)
		}
		pre := testing.Benchmark(func(b *testing.B) { sh.prefillRun(b, exec, vocab, bounds, 48) })
		sec := 48 / pre.Extra["tok/s"]
		if pre.N != 20 || !(sec > 0) || !relNear(pre.Extra["TFLOP/s"], bounds.FLOPs(PrefillShape(48))/sec/1e12) ||
			!relNear(pre.Extra["peak-frac"], pre.Extra["TFLOP/s"]*1e12/bounds.PeakFLOPS()) {
			t.Errorf("prefill: N %d, metrics %v", pre.N, pre.Extra)
		}
	})
}

// hostTokens is an executor as a TokenExecutor taking the greedy rows' argmax on the
// host (a GPU's takes it on the device), plus off: 1 makes every token wrong. It counts
// its ExecuteTokens steps and greedy rows.
type hostTokens struct {
	engine.Executor
	off               int32
	steps, greedyRows int
	tokens            []int32
}

func (x *hostTokens) ExecuteTokens(batch []engine.Input) ([][]float32, []int32, error) {
	x.steps++
	out := x.Execute(batch)
	x.tokens = x.tokens[:0]
	row := 0
	for _, in := range batch {
		if !in.Logits {
			continue
		}
		tok := int32(-1)
		if in.Greedy {
			tok = sampling.Argmax(out[row]) + x.off
			x.greedyRows++
		}
		x.tokens = append(x.tokens, tok)
		row++
	}
	return out, x.tokens, nil
}

// TestBenchmarkBodiesTakeGreedyTokens: with a TokenExecutor (the GPU's) the timed decode
// and prefill steps run through ExecuteTokens with every row greedy, as the engine runs
// greedy requests, after one checked step whose tokens must be the argmax of its logits;
// an executor whose tokens are not fails the benchmark.
func TestBenchmarkBodiesTakeGreedyTokens(t *testing.T) {
	h200, err := latency.LookupGPU("h200")
	if err != nil {
		t.Fatal(err)
	}
	sh := shape{blockSize: 16, singleContext: 24, batchContext: 40, batch: 4, decodeRoom: 8, prefillChunk: 64, prefill: []int{48}}
	exec, vocab, bounds, err := load(t, tinyModel(t), "cpu", h200, sh)
	if err != nil {
		t.Fatal(err)
	}
	withBenchtime(t, "5x", func() {
		for _, tc := range []struct {
			name string
			body func(*testing.B, engine.Executor)
			rows int // greedy rows a step
		}{
			{"batch decode", func(b *testing.B, x engine.Executor) { sh.batchDecode(b, x, vocab, bounds) }, 4},
			{"prefill", func(b *testing.B, x engine.Executor) { sh.prefillRun(b, x, vocab, bounds, 48) }, 1},
		} {
			x := &hostTokens{Executor: exec}
			r := testing.Benchmark(func(b *testing.B) { tc.body(b, x) })
			// testing.Benchmark runs the body with N 1, then with N 5: each run's checked
			// step and its timed ones.
			if r.N != 5 || x.steps != 1+1+1+r.N || x.greedyRows != tc.rows*x.steps {
				t.Errorf("%s: N %d, %d steps through ExecuteTokens with %d greedy rows; want 5, 8, %d", tc.name, r.N, x.steps, x.greedyRows, 8*tc.rows)
			}
			wrong := &hostTokens{Executor: exec, off: 1}
			if r := testing.Benchmark(func(b *testing.B) { tc.body(b, wrong) }); r.N != 0 {
				t.Errorf("%s: tokens off the argmax: the benchmark ran %d steps", tc.name, r.N)
			}
		}
	})
}

// badExecutor returns a NaN logit, or too few rows.
type badExecutor struct{ short bool }

func (x badExecutor) Execute(batch []engine.Input) [][]float32 {
	out := make([][]float32, len(batch))
	for i := range out {
		out[i] = make([]float32, 8)
		out[i][3] = float32(math.NaN())
	}
	if x.short {
		return out[:len(out)-1]
	}
	return out
}

// A backend computing nonsense fails the benchmark rather than timing it.
func TestBenchmarkRefusesBadLogits(t *testing.T) {
	h200, _ := latency.LookupGPU("h200")
	raw, err := os.ReadFile("../../sim/latency/data/models/llama-3.1-8b.json")
	if err != nil {
		t.Fatal(err)
	}
	bounds, err := NewBounds(h200, raw, "llama-3.1-8b.json")
	if err != nil {
		t.Fatal(err)
	}
	sh := shape{blockSize: 16, singleContext: 8, batchContext: 8, batch: 2, decodeRoom: 4, prefillChunk: 16, prefill: []int{8}}
	withBenchtime(t, "2x", func() {
		for _, x := range []badExecutor{{}, {short: true}} {
			if r := testing.Benchmark(func(b *testing.B) { sh.batchDecode(b, x, 8, bounds) }); r.N != 0 {
				t.Errorf("%+v: the benchmark ran %d steps", x, r.N)
			}
		}
	})
}
