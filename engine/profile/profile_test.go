package profile

import (
	"errors"
	"strings"
	"testing"

	"servelab/engine"
	"servelab/serving"
)

// recorder checks every step against the engine's limits and records its shape.
type recorder struct {
	t   *testing.T
	cfg Config
	out [][]float32
	n   int
	// noGreedy fails a step with an input marked Greedy.
	noGreedy bool
}

func (r *recorder) Execute(batch []engine.Input) [][]float32 {
	r.t.Helper()
	r.n++
	r.out = r.out[:0]
	tokens, used := 0, map[int32]bool{}
	for _, in := range batch {
		if r.noGreedy && in.Greedy {
			r.t.Fatal("an executor without ExecuteTokens got a Greedy input")
		}
		tokens += len(in.Tokens)
		end := in.Pos + len(in.Tokens)
		if end > r.cfg.MaxModelLen {
			r.t.Fatalf("sequence reaches %d tokens, past max model len %d", end, r.cfg.MaxModelLen)
		}
		if need := (end + r.cfg.BlockSize - 1) / r.cfg.BlockSize; len(in.Blocks) < need {
			r.t.Fatalf("block table of %d blocks for %d tokens", len(in.Blocks), end)
		}
		for _, b := range in.Blocks {
			if b < 0 || int(b) >= r.cfg.NumBlocks || used[b] {
				r.t.Fatalf("block %d out of range or shared", b)
			}
			used[b] = true
		}
		r.out = append(r.out, nil)
	}
	if tokens > r.cfg.MaxNumBatchedTokens || len(batch) > r.cfg.MaxNumSeqs {
		r.t.Fatalf("step of %d tokens and %d seqs exceeds the limits", tokens, len(batch))
	}
	return r.out
}

func TestMeasureStaysWithinLimits(t *testing.T) {
	cfg := Config{MaxModelLen: 200, NumBlocks: 64, BlockSize: 16, MaxNumBatchedTokens: 128, MaxNumSeqs: 16, Repeats: 2}
	rec := &recorder{t: t, cfg: cfg}
	points, err := Measure(rec, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(grid(cfg)); len(points) != want || rec.n != 1+2*want {
		t.Errorf("%d points from %d executions, want %d points from %d", len(points), rec.n, want, 1+2*want)
	}
	var prefill, decode, mixed bool
	for _, p := range points {
		s := p.Shape
		prefill = prefill || s.PrefillSeqs > 0 && s.DecodeSeqs == 0
		decode = decode || s.DecodeSeqs > 0 && s.PrefillSeqs == 0
		mixed = mixed || s.DecodeSeqs > 0 && s.PrefillSeqs > 0
	}
	if !prefill || !decode || !mixed {
		t.Errorf("grid lacks a kind of step: prefill %v decode %v mixed %v", prefill, decode, mixed)
	}
}

func TestShapesMatchTheScheduler(t *testing.T) {
	// A decode over 100 tokens of context and a 20-token chunk after 40 cached tokens.
	got := buildStep([]chunk{{context: 100, tokens: 1, decode: true}, {context: 40, tokens: 20}}, 16, make([]int32, 200), false).shape
	want := serving.StepShape{
		PrefillTokens: 20, PrefillSeqs: 1, DecodeSeqs: 1,
		ContextTokens: 101 + 60, DecodeContextTokens: 101, PrefillAttention: 20 * (40 + 10),
	}
	if got != want {
		t.Errorf("shape %+v, want %+v", got, want)
	}
}

func TestMeasureRejectsTooSmallEngines(t *testing.T) {
	if _, err := Measure(&recorder{t: t}, Config{MaxModelLen: 8, NumBlocks: 1, BlockSize: 16, MaxNumBatchedTokens: 8, MaxNumSeqs: 1}); err == nil {
		t.Error("a grid of almost no shapes was accepted")
	}
}

// failing is an executor whose steps fail after the first few (a GPU's device error).
type failing struct {
	recorder
	left int
}

func (f *failing) ExecuteErr(batch []engine.Input) ([][]float32, error) {
	if f.left == 0 {
		return nil, errors.New("cuda: cuLaunchKernel: CUDA_ERROR_ILLEGAL_ADDRESS (700)")
	}
	f.left--
	return f.Execute(batch), nil
}

// TestMeasureReportsStepErrors: a failed step ends the measurement with its error (the
// profiler called Execute only, which a GPU executor can only panic in).
func TestMeasureReportsStepErrors(t *testing.T) {
	cfg := Config{MaxModelLen: 200, NumBlocks: 64, BlockSize: 16, MaxNumBatchedTokens: 128, MaxNumSeqs: 16, Repeats: 2}
	f := &failing{recorder: recorder{t: t, cfg: cfg}, left: 3}
	_, err := Measure(f, cfg)
	if err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_ILLEGAL_ADDRESS") {
		t.Fatalf("Measure = %v; want the step's error", err)
	}
	if f.n != 3 {
		t.Errorf("%d steps ran; want 3 before the failure", f.n)
	}
}

// tokenRecorder is the recorder with ExecuteTokens (a GPU's executor): it counts the
// steps that came through it and the inputs that asked for logits without Greedy.
type tokenRecorder struct {
	recorder
	tokenSteps, notGreedy int
	tokens                []int32
}

func (r *tokenRecorder) ExecuteTokens(batch []engine.Input) ([][]float32, []int32, error) {
	r.tokenSteps++
	r.tokens = r.tokens[:0]
	for _, in := range batch {
		if in.Logits && !in.Greedy {
			r.notGreedy++
		}
		r.tokens = append(r.tokens, 0)
	}
	return r.Execute(batch), r.tokens, nil
}

// TestMeasureTakesGreedyTokens: a TokenExecutor's steps are timed through ExecuteTokens
// with every row Greedy, as the engine runs greedy requests (on a GPU, the argmax on the
// device and no logits copied back); other executors never see Greedy (recorder fails
// on it below).
func TestMeasureTakesGreedyTokens(t *testing.T) {
	cfg := Config{MaxModelLen: 200, NumBlocks: 64, BlockSize: 16, MaxNumBatchedTokens: 128, MaxNumSeqs: 16, Repeats: 2, Quick: true}
	tr := &tokenRecorder{recorder: recorder{t: t, cfg: cfg}}
	points, err := Measure(tr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tr.tokenSteps != tr.n || tr.n != 1+2*len(points) || tr.notGreedy != 0 {
		t.Errorf("%d of %d steps through ExecuteTokens (want all %d), %d rows without Greedy (want 0)", tr.tokenSteps, tr.n, 1+2*len(points), tr.notGreedy)
	}
	rec := &recorder{t: t, cfg: cfg, noGreedy: true}
	if _, err := Measure(rec, cfg); err != nil {
		t.Fatal(err)
	}
}

// The GPU grid reaches the batches and prompt lengths a GPU serves (decode batches to 256,
// prompts to 8192 tokens) where the engine's limits allow; the CPU grid stops at 64 and 1024.
func TestGPUGrid(t *testing.T) {
	// An 8B model on an H200: 8192 batched tokens, 256 sequences, 393,216 tokens of KV.
	cfg := Config{MaxModelLen: 131072, NumBlocks: 24576, BlockSize: 16, MaxNumBatchedTokens: 8192, MaxNumSeqs: 256, Repeats: 1}
	largest := func(cfg Config) (batch, prompt, context int) {
		for _, c := range grid(cfg) {
			if c[0].decode {
				batch = max(batch, len(c))
				context = max(context, c[0].context)
			} else if len(c) == 1 {
				prompt = max(prompt, c[0].tokens)
			}
		}
		return
	}
	if b, p, c := largest(cfg); b != 64 || p != 1024 || c != 1024 {
		t.Errorf("CPU grid: largest decode batch %d, prompt %d, decode context %d; want 64, 1024, 1024", b, p, c)
	}
	cfg.GPU = true
	if b, p, c := largest(cfg); b != 256 || p != 8192 || c != 4096 {
		t.Errorf("GPU grid: largest decode batch %d, prompt %d, decode context %d; want 256, 8192, 4096", b, p, c)
	}
	rec := &recorder{t: t, cfg: cfg}
	points, err := Measure(rec, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var batch256 bool
	for _, p := range points {
		batch256 = batch256 || p.Shape.DecodeSeqs == 256
	}
	if !batch256 || len(points) < 60 {
		t.Errorf("%d points measured, batch 256 among them %v: want the GPU grid within the limits", len(points), batch256)
	}
	// A smaller KV cache or token budget drops the shapes past it, as on the CPU.
	cfg.MaxNumBatchedTokens, cfg.NumBlocks = 2048, 4096
	if b, p, _ := largest(cfg); b != 256 || p != 2048 {
		t.Errorf("GPU grid under 2048 tokens and 4096 blocks: largest batch %d, prompt %d; want 256, 2048", b, p)
	}
}
