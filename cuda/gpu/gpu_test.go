package gpu

import (
	"encoding/binary"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/cuda/kernels"
	"servelab/engine/cpu"
	"servelab/engine/model"
	"servelab/engine/modelfile"
	"servelab/engine/safetensors"
	"servelab/engine/sampling"
)

// synth writes a random-weight model of spec into a temporary directory.
func synth(t testing.TB, spec modelfile.Spec, seed uint64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "model")
	if err := modelfile.Write(dir, spec, modelfile.RandomWeights(spec, seed)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func preset(t testing.TB, name string) modelfile.Spec {
	t.Helper()
	s, err := modelfile.Preset(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// small8 is a small model whose every inner dimension is a multiple of 8 (bfloat16 runs),
// with grouped-query attention and an untied classifier.
func small8(dtype safetensors.DType) modelfile.Spec {
	return modelfile.Spec{Dim: 64, Hidden: 96, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 300, MaxSeqLen: 256,
		RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: 2, DType: dtype}
}

func TestResolveDType(t *testing.T) {
	for _, tc := range []struct {
		flag, torch, want, err string
	}{
		{"", "bfloat16", BFloat16, ""},
		{"auto", "float16", BFloat16, ""},
		{"auto", "float32", Float32, ""},
		{"auto", "", Float32, ""},
		{"float32", "bfloat16", Float32, ""},
		{"bf16", "float32", BFloat16, ""},
		{"bfloat16", "", BFloat16, ""},
		{"float16", "", "", `dtype "float16": want auto, float32 or bfloat16`},
		{"auto", "float8_e4m3fn", "", `torch_dtype "float8_e4m3fn"`},
	} {
		got, err := ResolveDType(tc.flag, tc.torch)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ResolveDType(%q, %q) = %q, %v; want error %q", tc.flag, tc.torch, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ResolveDType(%q, %q) = %q, %v; want %q", tc.flag, tc.torch, got, err, tc.want)
		}
	}
}

// TestConvert: every source dtype to both device dtypes, chunked; bfloat16 rounds to
// nearest even as safetensors.Float32ToBF16 (ties, NaN, infinities, subnormals).
func TestConvert(t *testing.T) {
	vals := []float32{0, -0, 1, -2.5, 1.00390625 /* tie: 1 + 2^-8, rounds to even 1 */, 1.01171875, /* tie: rounds up to 1+2^-6 */
		3.14159265, float32(math.Inf(1)), float32(math.Inf(-1)), 1e-40, 65504, -1e-3}
	for _, src := range []safetensors.DType{safetensors.F32, safetensors.F16, safetensors.BF16} {
		data, err := safetensors.Encode(src, vals)
		if err != nil {
			t.Fatal(err)
		}
		tensor := &safetensors.Tensor{Name: "w", DType: src, Shape: []int{len(vals)}, Data: data}
		f32, _ := tensor.Float32() // exactly what the file holds
		for _, out := range []string{Float32, BFloat16} {
			var got []byte
			var buf []byte
			err := stream(tensor, out, &buf, func(off int, b []byte) error {
				got = append(got, b...)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var want []byte
			if out == Float32 {
				want = safetensors.EncodeF32(f32)
			} else {
				want = safetensors.EncodeBF16(f32)
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("%s -> %s (-want +got):\n%s", src, out, d)
			}
		}
	}
	// The ties round to even.
	if b := safetensors.Float32ToBF16(1.00390625); b != 0x3f80 {
		t.Errorf("bf16(1+2^-8) = %#x, want 0x3f80 (to even)", b)
	}
	// A tensor of more than one chunk arrives in order, chunk by chunk.
	n := streamChunk + 5
	data := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(data[2*i:], uint16(i))
	}
	tensor := &safetensors.Tensor{Name: "big", DType: safetensors.BF16, Shape: []int{n}, Data: data}
	var offs []int
	var buf []byte
	var got []byte
	stream(tensor, BFloat16, &buf, func(off int, b []byte) error {
		offs = append(offs, off)
		got = append(got, b...)
		return nil
	})
	if d := cmp.Diff([]int{0, streamChunk}, offs); d != "" || string(got) != string(data) {
		t.Errorf("chunks at %v (want [0 %d]), data equal %t", offs, streamChunk, string(got) == string(data))
	}
	if cap(buf) > 2*streamChunk {
		t.Errorf("conversion buffer of %d bytes; want at most one chunk", cap(buf))
	}
	// A tensor whose data does not match its shape is refused.
	bad := &safetensors.Tensor{Name: "bad", DType: safetensors.F32, Shape: []int{3}, Data: make([]byte, 8)}
	if err := stream(bad, Float32, &buf, func(int, []byte) error { return nil }); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Errorf("short tensor: err = %v", err)
	}
}

// TestBF16RefusesInnerDimension: bfloat16 needs every matrix's inner dimension a multiple
// of 8; the tiny preset's intermediate_size 172 is not, and the error names down_proj.
func TestBF16RefusesInnerDimension(t *testing.T) {
	dir := synth(t, preset(t, "tiny"), 1)
	didOpen := false
	_, err := load(Options{Dir: dir, DType: "bfloat16"}, func(int) (*opened, error) { didOpen = true; return nil, errors.New("unreachable") })
	if err == nil || !strings.Contains(err.Error(), "tensor model.layers.0.mlp.down_proj.weight: shape [64 172]: inner dimension 172 is not a multiple of 8") {
		t.Fatalf("err = %v; want the down_proj refusal", err)
	}
	if didOpen {
		t.Error("the GPU was opened before the model was checked")
	}
}

func TestKVBlocks(t *testing.T) {
	const gb = 1 << 30
	for _, tc := range []struct {
		name string
		s    kvSizing
		want int
		err  string
	}{
		// 141 GB H200, 16 GiB of weights + 1 GiB of activations + 0.5 GiB context used:
		// 0.9·141 - 17.5 = 109.4 GiB → 109.4 GiB / 2 MiB blocks.
		{"utilization", kvSizing{Total: 141 * gb, Free: 141*gb - 35*gb/2, BlockBytes: 2 << 20}, int((136258127462 - 35*gb/2) / (2 << 20)), ""},
		{"explicit utilization", kvSizing{Total: 100 * gb, Free: 90 * gb, Utilization: 0.5, BlockBytes: gb}, 40, ""},
		{"others' memory counts", kvSizing{Total: 100 * gb, Free: 40 * gb, Utilization: 0.9, BlockBytes: gb}, 30, ""},
		{"kv-cache-memory-bytes", kvSizing{Total: 100 * gb, Free: 90 * gb, KVCacheMemory: 10*gb + 5, BlockBytes: gb}, 10, ""},
		{"num-gpu-blocks-override", kvSizing{Total: 100 * gb, Free: 90 * gb, KVCacheMemory: 10 * gb, NumBlocks: 7, BlockBytes: gb}, 7, ""},
		{"override too big", kvSizing{Total: 100 * gb, Free: 5 * gb, NumBlocks: 7, BlockBytes: gb}, 0, "--num-gpu-blocks-override 7"},
		{"bytes too big", kvSizing{Total: 100 * gb, Free: 5 * gb, KVCacheMemory: 6 * gb, BlockBytes: gb}, 0, "--kv-cache-memory-bytes"},
		{"bytes hold no block", kvSizing{Total: 100 * gb, Free: 50 * gb, KVCacheMemory: 100, BlockBytes: gb}, 0, "holds no KV block"},
		{"no room", kvSizing{Total: 100 * gb, Free: 10 * gb, Utilization: 0.9, BlockBytes: gb}, 0, "no room for a KV block"},
		{"bad utilization", kvSizing{Total: 100 * gb, Free: 90 * gb, Utilization: 1.5, BlockBytes: gb}, 0, "--gpu-memory-utilization 1.5"},
	} {
		got, err := kvBlocks(tc.s)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %d, %v; want error %q", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
	// Llama-3.1-8B's activations for 2048 tokens and 256 logit rows (their logits and
	// argmax tokens).
	c := model.Config{Dim: 4096, Hidden: 14336, Heads: 32, KVHeads: 8, HeadDim: 128, Vocab: 128256}
	if got, want := activationBytes(c, 2048, 256), int64(4*(2048*(2*4096+4096+2*1024+4096+3*14336)+256*(4096+128256+1))); got != want {
		t.Errorf("activationBytes = %d, want %d", got, want)
	}
}

// loadFake loads dir on a fake device of total bytes.
func loadFake(t *testing.T, o Options, total uint64) (*Backend, *fakeDevice, *fakeOps, *int) {
	t.Helper()
	d := newFakeDevice(total)
	ops := &fakeOps{d: d}
	closed := new(int)
	b, err := load(o, fakeOpener(d, ops, closed))
	if err != nil {
		t.Fatal(err)
	}
	return b, d, ops, closed
}

// TestFakeForwardMatchesCPU runs the GPU backend's whole step path (weights streamed and
// converted, the layout uploaded, every kernel launched with its pointers and sizes, KV
// slots, logits copied back) on a fake device whose kernels implement cuda/kernels'
// contract in Go, against the CPU engine: greedy tokens identical for 32 steps of a mixed
// batch with a prefix-cache hit in float32, logits close in bfloat16. What it cannot check
// is the CUDA kernels themselves: TestEmulatedForwardMatchesCPU runs them emulated on the
// CPU, TestForwardMatchesCPU on a GPU.
func TestFakeForwardMatchesCPU(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  modelfile.Spec
		dtype string
	}{
		{"tiny/float32", preset(t, "tiny"), "float32"},
		{"gqa-untied-bf16file/auto", small8(safetensors.BF16), "auto"},
		{"gqa-untied/bfloat16", small8(safetensors.F32), "bfloat16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newFakeDevice(1 << 30)
			ops := &fakeOps{d: d}
			closed := new(int)
			forwardMatchesCPU(t, tc.spec, tc.dtype, testDevice{
				open:     fakeOpener(d, ops, closed),
				launched: func(k string) int { return ops.launches[k] },
				live:     func() int { return len(d.liveAllocs()) },
				closed:   closed,
			})
		})
	}
}

// testDevice is a device the backend's tests run on without a GPU: the Go fake
// (fake_test.go) or kernels.cu emulated on the CPU (emu_test.go).
type testDevice struct {
	open     opener
	launched func(kernel string) int // launches of a kernel of cuda/kernels' Table so far
	live     func() int              // device allocations not freed
	closed   *int                    // contexts destroyed
}

// forwardMatchesCPU writes spec's model with random weights, loads it on dev in dtype
// (64 KV blocks of 16, activations for 64 tokens and 8 sequences), runs compareWithCPU,
// checks that the prefill and decode kernels ran, and that Close frees every allocation
// and destroys the context once.
func forwardMatchesCPU(t *testing.T, spec modelfile.Spec, dtype string, dev testDevice) {
	t.Helper()
	dir := synth(t, spec, 7)
	b, err := load(Options{Dir: dir, DType: dtype, NumBlocks: 64, MaxNumBatchedTokens: 64, MaxNumSeqs: 8}, dev.open)
	if err != nil {
		t.Fatal(err)
	}
	if b.NumBlocks() != 64 || b.BlockSize() != 16 {
		t.Fatalf("KV cache of %d blocks of %d", b.NumBlocks(), b.BlockSize())
	}
	compareWithCPU(t, dir, b)
	prefill := "sl_attn_prefill"
	if c := b.Config(); b.Info().DType == BFloat16 {
		prefill = "sl_attn_prefill_bf16" // Attention's kernel for bf16 (head dims up to kernels.FlashMaxHeadDim)
		if c.Heads > c.KVHeads && kernels.FlashGQA(c.Heads, c.KVHeads, c.HeadDim) {
			prefill = "sl_attn_prefill_bf16_gqa" // a block per kv head's group of query heads
		}
	}
	for _, k := range []string{"sl_attn_decode", prefill, "sl_rope_store", "sl_silu_mul", "sl_argmax"} {
		if dev.launched(k) == 0 {
			t.Errorf("kernel %s never launched", k)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := dev.live(); n != 0 || *dev.closed != 1 {
		t.Errorf("after Close: %d allocations left, context destroyed %d times", n, *dev.closed)
	}
}

// compareWithCPU drives b (a GPU backend) and the CPU engine's runner with the same
// steps: a prefill chunk and a whole prompt in one batch, then the chunk's rest, a decode
// and a third sequence hitting the first one's cached prefix blocks in one batch, then 32
// decode steps of all three, each engine fed its own greedy tokens. In float32 the tokens
// must be identical; every logits row must be within checkLogits' tolerance of the CPU's
// (1e-4 relative RMS error in float32).
//
// The first greedySteps steps run again through ForwardTokens (rewriting the same keys
// and values) with some rows Greedy, every pattern of the three sequences among them: a
// greedy row's logits are nil and its token is sampling.Argmax of the row Forward returned
// (the kernels are deterministic, so exactly; in float32 that is the CPU's argmax too),
// and the other rows' logits are Forward's bit for bit.
//
// Why a float32 logits bound besides the tokens: with random weights the logits are
// dominated by the embeddings' residual path, so greedy tokens alone miss broken
// attention: a sign flipped in the rotary embedding left every token identical and moved
// the tiny preset's logits by 0.9% relative RMS (TestEmulatedForwardMatchesCPU), while
// sums in another order move them by about 3e-7.
const greedySteps = 10

func compareWithCPU(t *testing.T, dir string, b *Backend) {
	t.Helper()
	numBlocks, blockSize, dtype := b.NumBlocks(), b.BlockSize(), b.Info().DType
	cm, err := model.Load(dir, cpu.NewPool(0))
	if err != nil {
		t.Fatal(err)
	}
	runner := cm.NewRunner(cm.NewKVCache(numBlocks, blockSize))
	vocab := cm.Config.Vocab
	prompt := func(n, seed int) []int32 {
		p := make([]int32, n)
		for i := range p {
			p[i] = int32(3 + (i*7919+seed*104729)%(vocab-3))
		}
		return p
	}
	tbl := func(blocks ...int32) []int32 { return blocks }
	a := prompt(2*blockSize+9, 1)                                       // chunked: 2 blocks + 9 in step 1, the rest in step 2
	bp := prompt(blockSize+3, 2)                                        // whole prompt in step 1
	c := append(append([]int32{}, a[:2*blockSize]...), prompt(5, 3)...) // shares a's first 2 blocks
	seqs := []struct {
		toks   []int32
		blocks []int32
	}{
		{a, tbl(0, 1, 2, 3, 4, 5)},
		{bp, tbl(10, 11, 12, 13, 14)},
		{c, tbl(0, 1, 20, 21, 22, 23)},
	}
	chunk := 2*blockSize + 5
	steps := [][]model.SeqInput{
		{{Tokens: a[:chunk], Blocks: seqs[0].blocks}, {Tokens: bp, Blocks: seqs[1].blocks, Logits: true}},
	}
	type state struct {
		gpu, cpu []int32 // generated tokens
	}
	st := make([]state, 3)
	maxRel := 0.0
	check := func(step int, g, c [][]float32, who []int) {
		t.Helper()
		if len(g) != len(c) {
			t.Fatalf("step %d: %d logits rows, CPU %d", step, len(g), len(c))
		}
		for i := range g {
			gt, ct := argmax(g[i]), argmax(c[i])
			s := &st[who[i]]
			s.gpu, s.cpu = append(s.gpu, gt), append(s.cpu, ct)
			maxRel = max(maxRel, checkLogits(t, step, who[i], dtype, cm.Config, g[i], c[i]))
			if dtype == Float32 && gt != ct {
				t.Fatalf("step %d, sequence %d: greedy token %d on the GPU, %d on the CPU", step, who[i], gt, ct)
			}
		}
	}
	greedyRows := 0
	run := func(step int, batch []model.SeqInput, who []int) {
		t.Helper()
		g, err := b.Forward(batch)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		cb := make([]model.SeqInput, len(batch))
		copy(cb, batch)
		cl := runner.Forward(cb)
		check(step, g, cl, who)
		if step >= greedySteps {
			return
		}
		// g is the backend's host buffer, which the next step overwrites.
		want := make([][]float32, len(g))
		for i := range g {
			want[i] = slices.Clone(g[i])
		}
		tb := make([]model.SeqInput, len(batch))
		copy(tb, batch)
		greedy := make([]bool, len(g))
		row := 0
		for i := range tb {
			if tb[i].Logits {
				// Step s marks row j greedy by bit j of s+1: 1, 2, 3, ... cover every pattern.
				greedy[row] = (step+1)>>row&1 == 1
				tb[i].Greedy = greedy[row]
				row++
			}
		}
		lg, toks, err := b.ForwardTokens(tb)
		if err != nil {
			t.Fatalf("step %d, greedy rows %v: %v", step, greedy, err)
		}
		if len(lg) != len(g) || len(toks) != len(g) && slices.Contains(greedy, true) {
			t.Fatalf("step %d, greedy rows %v: %d logits rows and %d tokens; want %d", step, greedy, len(lg), len(toks), len(g))
		}
		for i := range lg {
			if !greedy[i] {
				if d := cmp.Diff(want[i], lg[i], cmpopts.EquateNaNs()); d != "" {
					t.Fatalf("step %d, greedy rows %v: row %d's logits through ForwardTokens differ from Forward's (-Forward +ForwardTokens):\n%s", step, greedy, i, d)
				}
				continue
			}
			greedyRows++
			if lg[i] != nil {
				t.Errorf("step %d, greedy rows %v: row %d has %d logits; want none copied", step, greedy, i, len(lg[i]))
			}
			if w := sampling.Argmax(want[i]); toks[i] != w {
				t.Fatalf("step %d, greedy rows %v: row %d's device token %d; sampling.Argmax of Forward's row %d", step, greedy, i, toks[i], w)
			}
			if w := sampling.Argmax(cl[i]); dtype == Float32 && toks[i] != w {
				t.Fatalf("step %d, greedy rows %v: row %d's device token %d; sampling.Argmax of the CPU's row %d", step, greedy, i, toks[i], w)
			}
		}
	}
	run(0, steps[0], []int{1})
	// Step 1: a's rest, b's first decode, c's prefix hit (blocks 0 and 1 computed by a).
	run(1, []model.SeqInput{
		{Tokens: a[chunk:], Pos: chunk, Blocks: seqs[0].blocks, Logits: true},
		{Tokens: st[1].cpu[:1], Pos: len(bp), Blocks: seqs[1].blocks, Logits: true},
		{Tokens: c[2*blockSize:], Pos: 2 * blockSize, Blocks: seqs[2].blocks, Logits: true},
	}, []int{0, 1, 2})
	for step := 2; step < 34; step++ {
		var batch []model.SeqInput
		for i, s := range seqs {
			n := len(st[i].cpu)
			pos := len(s.toks) + n - 1
			if i == 1 {
				pos = len(bp) + n - 1
			}
			batch = append(batch, model.SeqInput{Tokens: st[i].cpu[n-1:], Pos: pos, Blocks: s.blocks, Logits: true})
		}
		if (batch[0].Pos+1+blockSize-1)/blockSize > len(seqs[0].blocks) {
			break
		}
		run(step, batch, []int{0, 1, 2})
	}
	if dtype == Float32 {
		for i := range st {
			if d := cmp.Diff(st[i].cpu, st[i].gpu); d != "" {
				t.Errorf("sequence %d tokens (-cpu +gpu):\n%s", i, d)
			}
		}
	}
	if greedyRows == 0 {
		t.Error("no greedy row ran through ForwardTokens")
	}
	t.Logf("%s: %d tokens per sequence compared; largest logits relative RMS error %.3g; %d greedy rows reduced on the device", dtype, len(st[0].cpu), maxRel, greedyRows)
}

// wideBatchMatchesCPU loads spec on dev in dtype and runs a batch wider than
// compareWithCPU's against the CPU engine: 12 sequences whose prompts (6 to 17 tokens, 138
// in all) prefill in one step, past one row tile of either GEMM (64 rows for float32, 128
// for bfloat16), then 2 decode steps of all 12, whose 12 logits rows take the bfloat16
// classifier through sl_gemm_bf16_skinny instead of the GEMV (at most kernels.GemvMaxRows rows);
// the 138 prefill rows take sl_gemm_bf16.
// Every logits row must be within checkLogits' tolerance, greedy tokens identical in
// float32.
func wideBatchMatchesCPU(t *testing.T, spec modelfile.Spec, dtype string, dev testDevice) {
	t.Helper()
	dir := synth(t, spec, 13)
	b, err := load(Options{Dir: dir, DType: dtype, NumBlocks: 32, MaxNumBatchedTokens: 160, MaxNumSeqs: 16}, dev.open)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cm, err := model.Load(dir, cpu.NewPool(0))
	if err != nil {
		t.Fatal(err)
	}
	runner := cm.NewRunner(cm.NewKVCache(b.NumBlocks(), b.BlockSize()))
	const n = 12
	batch := make([]model.SeqInput, n)
	pos := make([]int, n)
	for i := range batch {
		toks := make([]int32, 6+i)
		for j := range toks {
			toks[j] = int32(3 + (j*7919+i*104729)%(cm.Config.Vocab-3))
		}
		batch[i] = model.SeqInput{Tokens: toks, Blocks: []int32{int32(2 * i), int32(2*i + 1)}, Logits: true}
	}
	maxRel := 0.0
	for step := range 3 {
		g, err := b.Forward(batch)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		c := runner.Forward(append([]model.SeqInput(nil), batch...))
		if len(g) != n || len(c) != n {
			t.Fatalf("step %d: %d logits rows, CPU %d; want %d", step, len(g), len(c), n)
		}
		for i := range n {
			maxRel = max(maxRel, checkLogits(t, step, i, dtype, cm.Config, g[i], c[i]))
			gt, ct := argmax(g[i]), argmax(c[i])
			if dtype == Float32 && gt != ct {
				t.Fatalf("step %d, sequence %d: greedy token %d on the GPU, %d on the CPU", step, i, gt, ct)
			}
			pos[i] += len(batch[i].Tokens)
			batch[i] = model.SeqInput{Tokens: []int32{ct}, Pos: pos[i], Blocks: batch[i].Blocks, Logits: true}
		}
	}
	t.Logf("%s: %d sequences, 3 steps; largest logits relative RMS error %.3g", dtype, n, maxRel)
}

// modelCase is a model and the dtype a backend test runs it in.
type modelCase struct {
	name  string
	spec  modelfile.Spec
	dtype string
}

// smallModelCases are the models the fake-device and emulated comparisons run: the tiny
// preset in float32, and a bfloat16 checkpoint with grouped-query attention, an untied
// classifier and inner dimensions that are multiples of 8 (so the bf16 kernels run).
func smallModelCases(t *testing.T) []modelCase {
	return []modelCase{
		{"tiny/float32", preset(t, "tiny"), Float32},
		{"gqa-untied-bf16file/bfloat16", small8(safetensors.BF16), BFloat16},
	}
}

// TestFakeWideBatchMatchesCPU is wideBatchMatchesCPU on the fake device.
func TestFakeWideBatchMatchesCPU(t *testing.T) {
	for _, tc := range smallModelCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			d := newFakeDevice(1 << 30)
			wideBatchMatchesCPU(t, tc.spec, tc.dtype, testDevice{open: fakeOpener(d, &fakeOps{d: d}, new(int))})
		})
	}
}

// checkLogits fails t unless a logits row computed in dtype is within its tolerance of
// the CPU engine's (relative RMS error), and returns the error.
//   - float32: sums in another order (and FMA on a GPU) round by about 1e-7 per operation,
//     far under 1e-4 after a few layers.
//   - bfloat16 from a float32 checkpoint: the GPU rounds the weights to 8 significant bits
//     (relative 2^-9) and the CPU keeps them: over a few layers under 5%.
//   - bfloat16 from a bfloat16 checkpoint: both hold the same weights and only
//     the tensor-core GEMMs' rounding of x to bfloat16 (the GEMV keeps x in float32) differs:
//     under 1% for up to 4 layers, growing as the square root of the depth past that
//     (each layer's roundings are independent): llama-3.2-1b's 16 layers measured at most
//     1.28% over compareWithCPU's steps (1.13% at the first) on the fake device, which
//     rounds as they do, within their 2% (float32 there: 9.1e-6, tokens identical).
func checkLogits(t *testing.T, step, seq int, dtype string, cfg model.Config, g, c []float32) float64 {
	t.Helper()
	var num, den float64
	for j := range g {
		d := float64(g[j] - c[j])
		num += d * d
		den += float64(c[j]) * float64(c[j])
	}
	rel := math.Sqrt(num / den)
	tol := 1e-4
	if dtype == BFloat16 {
		tol = 0.05
		if cfg.TorchDType == "bfloat16" {
			tol = 0.01 * math.Sqrt(max(1, float64(cfg.Layers)/4))
		}
	}
	if !(rel <= tol) {
		t.Fatalf("step %d, sequence %d: %s logits (%s checkpoint) relative RMS error %.3g > %g", step, seq, dtype, cfg.TorchDType, rel, tol)
	}
	return rel
}

func argmax(v []float32) int32 {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return int32(best)
}

// TestFakeDeviceErrorStopsBackend: a driver error fails the step with that error, and
// every later step and KV copy fails with it too (a CUDA fault is sticky), without a
// crash; Close still frees everything.
func TestFakeDeviceErrorStopsBackend(t *testing.T) {
	dir := synth(t, preset(t, "tiny"), 3)
	b, d, ops, closed := loadFake(t, Options{Dir: dir, NumBlocks: 8, MaxNumBatchedTokens: 16, MaxNumSeqs: 4}, 1<<30)
	d.failCall, d.failAt = "launch", 5
	batch := []model.SeqInput{{Tokens: []int32{1, 2, 3}, Blocks: []int32{0}, Logits: true}}
	if _, err := b.Forward(batch); !errors.Is(err, errFake) {
		t.Fatalf("step with a failing launch: err = %v; want the device error", err)
	}
	before := ops.launches["sl_rmsnorm"]
	if _, err := b.Forward(batch); !errors.Is(err, errFake) || !strings.Contains(err.Error(), "every later step fails") {
		t.Errorf("next step: err = %v; want the first error again", err)
	}
	if ops.launches["sl_rmsnorm"] != before {
		t.Error("a step ran on a failed backend")
	}
	dst := make([]byte, b.BlockBytes())
	for i := range dst {
		dst[i] = 0xff
	}
	b.ReadBlock(0, dst)
	if dst[0] != 0 || dst[len(dst)-1] != 0 {
		t.Error("ReadBlock on a failed backend left stale bytes in dst")
	}
	if !errors.Is(b.Err(), errFake) {
		t.Errorf("Err() = %v", b.Err())
	}
	// Input errors are the caller's: they fail the call, not the backend.
	b2, _, _, _ := loadFake(t, Options{Dir: dir, NumBlocks: 8}, 1<<30)
	if _, err := b2.Forward([]model.SeqInput{{Tokens: []int32{9999}, Blocks: []int32{0}}}); err == nil || b2.Err() != nil {
		t.Errorf("token outside the vocabulary: err = %v, backend err = %v; want an error that does not stop the backend", err, b2.Err())
	}
	b2.Close()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := d.liveAllocs(); len(n) != 0 || *closed != 1 {
		t.Errorf("after Close: allocations %v, context destroyed %d times", n, *closed)
	}
}

// TestFakeKVBlocksMatchCPU: a block read off the device is the CPU cache's block for the
// same tokens (model.KVCache's format, float32 within rounding), and WriteBlock then
// ReadBlock round-trips a block byte for byte (KV tiers and P/D transfers).
func TestFakeKVBlocksMatchCPU(t *testing.T) {
	d := newFakeDevice(1 << 30)
	kvBlocksMatchCPU(t, fakeOpener(d, &fakeOps{d: d}, new(int)))
}

// kvBlocksMatchCPU is TestFakeKVBlocksMatchCPU on the device open makes.
func kvBlocksMatchCPU(t *testing.T, open opener) {
	t.Helper()
	dir := synth(t, preset(t, "tiny"), 5)
	b, err := load(Options{Dir: dir, NumBlocks: 8, BlockSize: 4}, open)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cm, err := model.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	cache := cm.NewKVCache(8, 4)
	batch := []model.SeqInput{{Tokens: []int32{5, 6, 7, 8, 9, 10}, Blocks: []int32{3, 6}, Logits: true}}
	if _, err := b.Forward(batch); err != nil {
		t.Fatal(err)
	}
	cm.NewRunner(cache).Forward(batch)
	if b.BlockBytes() != cache.BlockBytes() {
		t.Fatalf("BlockBytes %d, CPU %d", b.BlockBytes(), cache.BlockBytes())
	}
	got, want := make([]byte, b.BlockBytes()), make([]byte, b.BlockBytes())
	for _, blk := range []int32{3, 6} {
		b.ReadBlock(blk, got)
		cache.ReadBlock(blk, want)
		for i := 0; i < len(got); i += 4 {
			g := math.Float32frombits(binary.LittleEndian.Uint32(got[i:]))
			w := math.Float32frombits(binary.LittleEndian.Uint32(want[i:]))
			if math.Abs(float64(g-w)) > 1e-4*(1+math.Abs(float64(w))) {
				t.Fatalf("block %d, float %d: %g on the GPU, %g on the CPU", blk, i/4, g, w)
			}
		}
	}
	for i := range got {
		got[i] = byte(i * 7)
	}
	b.WriteBlock(5, got)
	back := make([]byte, len(got))
	b.ReadBlock(5, back)
	if string(back) != string(got) {
		t.Error("WriteBlock then ReadBlock did not round-trip")
	}
}

// TestFakeCloseWhileServing: Close waits for steps in flight on other goroutines, and
// calls after it fail saying so (no send to a stopped worker, no crash).
func TestFakeCloseWhileServing(t *testing.T) {
	dir := synth(t, preset(t, "tiny"), 9)
	b, _, _, closed := loadFake(t, Options{Dir: dir, NumBlocks: 8}, 1<<30)
	done := make(chan error)
	go func() {
		var err error
		for err == nil {
			_, err = b.Forward([]model.SeqInput{{Tokens: []int32{1, 2, 3}, Blocks: []int32{0}, Logits: true}})
		}
		done <- err
	}()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Forward after Close: %v; want the backend is closed", err)
	}
	dst := make([]byte, b.BlockBytes())
	dst[0] = 1
	b.ReadBlock(0, dst)
	if dst[0] != 0 || *closed != 1 || b.Close() != nil {
		t.Errorf("after Close: ReadBlock left %d, context destroyed %d times", dst[0], *closed)
	}
}
