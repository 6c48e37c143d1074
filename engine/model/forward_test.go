package model

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/engine/cpu"
	"servelab/engine/kv"
	"servelab/engine/safetensors"
	"servelab/serving"
)

// testArchs are the random configurations every forward test runs on.
var testArchs = []testArch{
	{name: "llama-mha-untied", arch: ArchLlama, dim: 32, hidden: 48, layers: 2, heads: 4, kvHeads: 4, vocab: 96,
		maxPos: 128, theta: 10000, eps: 1e-5, blockSize: 4},
	{name: "llama-gqa-tied-llama3", arch: ArchLlama, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 2, vocab: 80,
		maxPos: 256, theta: 10000, eps: 1e-5, tied: true, blockSize: 5,
		scaling: map[string]any{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
	{name: "qwen2-bias-tied", arch: ArchQwen2, dim: 32, hidden: 64, layers: 2, heads: 4, kvHeads: 2, vocab: 96,
		maxPos: 128, theta: 1000000, eps: 1e-6, tied: true, blockSize: 1},
	{name: "qwen2-mqa-headdim-linear", arch: ArchQwen2, dim: 32, hidden: 40, layers: 3, heads: 3, kvHeads: 1, headDim: 12, vocab: 70,
		maxPos: 128, theta: 10000, eps: 1e-6, blockSize: 8,
		scaling: map[string]any{"rope_type": "linear", "factor": 2.0}},
	{name: "mistral-gqa-bf16-sharded", arch: ArchMistral, dim: 32, hidden: 48, layers: 2, heads: 8, kvHeads: 2, vocab: 64,
		maxPos: 128, theta: 10000, eps: 1e-5, blockSize: 3, dtype: safetensors.BF16, shards: 3},
}

// seqDef is one sequence of a scenario: its full token list is n tokens, the first
// prefixBlocks*blockSize of them copied from sequence prefixOf.
type seqDef struct {
	name         string
	n            int
	prefixOf     string
	prefixBlocks int
}

// run asks a step to compute the next n tokens of a sequence; n = 0 means all but the last
// two of its remaining tokens (block-size dependent, for sequences that start after a
// prefix hit).
type run struct {
	seq      string
	n        int
	noLogits bool
}

// op is one action of a scenario: a step (runs), a prefix-cache hit (share: seq starts
// with the first blocks blocks of from's table, already computed), or a preemption (the
// sequence's blocks are freed, to be reused first, and it restarts from position 0).
type op struct {
	runs    []run
	share   string
	from    string
	blocks  int
	preempt string
}

func step(runs ...run) op { return op{runs: runs} }

type scenario struct {
	name string
	seqs []seqDef
	ops  []op
}

var scenarios = []scenario{
	{
		name: "single prefill",
		seqs: []seqDef{{name: "a", n: 23}},
		ops:  []op{step(run{"a", 23, false})},
	},
	{
		name: "chunked prefill then decode",
		seqs: []seqDef{{name: "a", n: 40}},
		ops: []op{
			step(run{"a", 5, false}), step(run{"a", 1, false}), step(run{"a", 9, false}), step(run{"a", 3, true}),
			step(run{"a", 12, false}), step(run{"a", 1, false}), step(run{"a", 7, false}), step(run{"a", 1, false}), step(run{"a", 1, false}),
		},
	},
	{
		name: "mixed prefill and decode batches",
		seqs: []seqDef{{name: "a", n: 35}, {name: "b", n: 29}, {name: "c", n: 16}, {name: "d", n: 31}},
		ops: []op{
			step(run{"a", 8, false}, run{"b", 3, true}),
			step(run{"a", 10, false}, run{"b", 1, false}, run{"c", 12, false}),
			step(run{"c", 1, false}, run{"a", 12, false}, run{"b", 1, false}, run{"d", 5, false}),
			step(run{"a", 1, false}, run{"b", 20, false}, run{"c", 1, false}, run{"d", 9, true}),
			step(run{"d", 14, false}, run{"a", 1, false}, run{"c", 1, false}),
			step(run{"a", 1, false}, run{"b", 1, false}, run{"c", 1, false}, run{"d", 1, false}),
			step(run{"b", 1, false}, run{"d", 1, false}, run{"a", 1, true}),
			step(run{"a", 1, false}, run{"b", 1, false}, run{"d", 1, false}),
		},
	},
	{
		name: "prefix cache hit",
		seqs: []seqDef{{name: "a", n: 26}, {name: "b", n: 30, prefixOf: "a", prefixBlocks: 2}, {name: "c", n: 14, prefixOf: "a", prefixBlocks: 1}},
		ops: []op{
			step(run{"a", 17, false}),
			{share: "b", from: "a", blocks: 2},
			{share: "c", from: "a", blocks: 1},
			step(run{"b", 3, false}, run{"a", 1, false}, run{"c", 2, false}),
			step(run{"b", 0, false}, run{"a", 1, false}, run{"c", 0, false}),
			step(run{"a", 1, false}, run{"b", 1, false}, run{"c", 1, false}),
			step(run{"c", 1, false}, run{"b", 1, false}, run{"a", 1, false}),
		},
	},
	{
		name: "preemption and recompute",
		seqs: []seqDef{{name: "a", n: 24}, {name: "b", n: 26}, {name: "c", n: 22}},
		ops: []op{
			step(run{"a", 12, false}, run{"b", 6, false}),
			step(run{"a", 1, false}, run{"b", 6, false}),
			step(run{"a", 1, false}, run{"b", 8, false}),
			{preempt: "a"},
			step(run{"c", 20, false}, run{"b", 1, false}),
			step(run{"a", 14, false}, run{"c", 1, false}, run{"b", 1, false}),
			step(run{"a", 1, false}, run{"b", 1, false}, run{"c", 1, false}),
			{preempt: "b"},
			step(run{"a", 1, false}, run{"b", 17, false}),
			step(run{"b", 5, false}, run{"a", 1, false}),
		},
	},
}

// harness drives a Runner as the engine does, with block tables handed out from a
// shuffled free list (so they are neither contiguous nor ordered, and interleave between
// sequences) and reference counts for shared prefix blocks.
type harness struct {
	t    *testing.T
	rm   *refModel
	r    *Runner
	bs   int
	free []int32
	refs map[int32]int
	seqs map[string]*hseq
}

type hseq struct {
	toks   []int32
	ref    [][]float64 // reference logits at every position
	pos    int
	blocks []int32
}

func newHarness(t *testing.T, rm *refModel, m *Model, numBlocks int, seed uint64) *harness {
	t.Helper()
	cache := m.NewKVCache(numBlocks, rm.a.blockSize)
	poisonCache(cache)
	h := &harness{t: t, rm: rm, r: m.NewRunner(cache), bs: rm.a.blockSize, refs: map[int32]int{}, seqs: map[string]*hseq{}}
	for b := range numBlocks {
		h.free = append(h.free, int32(b))
	}
	rng := rand.New(rand.NewPCG(seed, 3))
	rng.Shuffle(len(h.free), func(i, j int) { h.free[i], h.free[j] = h.free[j], h.free[i] })
	return h
}

func (h *harness) addSeqs(defs []seqDef, rng *rand.Rand) {
	h.t.Helper()
	for _, d := range defs {
		toks := randomTokens(rng, d.n, h.rm.a.vocab)
		if d.prefixOf != "" {
			copy(toks, h.seqs[d.prefixOf].toks[:d.prefixBlocks*h.bs])
		}
		h.seqs[d.name] = &hseq{toks: toks, ref: h.rm.refForward(toks)}
	}
}

func (h *harness) alloc(s *hseq, end int) {
	for len(s.blocks)*h.bs < end {
		if len(h.free) == 0 {
			h.t.Fatal("harness: out of blocks")
		}
		b := h.free[0]
		h.free = h.free[1:]
		h.refs[b] = 1
		s.blocks = append(s.blocks, b)
	}
}

func (h *harness) release(s *hseq) {
	// Freed blocks go to the front, so the next allocation overwrites them.
	for _, b := range slices.Backward(s.blocks) {
		if h.refs[b]--; h.refs[b] == 0 {
			h.free = append([]int32{b}, h.free...)
		}
	}
	s.blocks, s.pos = nil, 0
}

// do runs one op and checks every logits row against the reference.
func (h *harness) do(label string, o op) {
	h.t.Helper()
	switch {
	case o.share != "":
		s, from := h.seqs[o.share], h.seqs[o.from]
		if from.pos < o.blocks*h.bs || s.pos != 0 {
			h.t.Fatalf("%s: bad share op", label)
		}
		s.blocks = append([]int32(nil), from.blocks[:o.blocks]...)
		for _, b := range s.blocks {
			h.refs[b]++
		}
		s.pos = o.blocks * h.bs
		return
	case o.preempt != "":
		h.release(h.seqs[o.preempt])
		return
	}
	batch := make([]SeqInput, len(o.runs))
	for i, rn := range o.runs {
		s := h.seqs[rn.seq]
		n := rn.n
		if n == 0 {
			n = len(s.toks) - s.pos - 2
		}
		if s.pos+n > len(s.toks) {
			h.t.Fatalf("%s: run %s past its %d tokens", label, rn.seq, len(s.toks))
		}
		h.alloc(s, s.pos+n)
		batch[i] = SeqInput{Tokens: s.toks[s.pos : s.pos+n], Pos: s.pos, Blocks: s.blocks, Logits: !rn.noLogits}
	}
	out := h.r.Forward(batch)
	k := 0
	for i, rn := range o.runs {
		s := h.seqs[rn.seq]
		in := batch[i]
		s.pos += len(in.Tokens)
		if !in.Logits {
			continue
		}
		if k >= len(out) {
			h.t.Fatalf("%s: %d logits rows, want more", label, len(out))
		}
		checkLogits(h.t, fmt.Sprintf("%s: seq %s position %d", label, rn.seq, s.pos-1), out[k], s.ref[s.pos-1])
		k++
	}
	if k != len(out) {
		h.t.Errorf("%s: %d logits rows, want %d", label, len(out), k)
	}
}

// TestForwardMatchesReference runs every scenario on every random config and compares
// each logits row the batched, paged forward returns with the float64 reference's at the
// same position, within tolerance (see relErr).
func TestForwardMatchesReference(t *testing.T) {
	for ai, a := range testArchs {
		rm := newRefModel(a, uint64(100+ai))
		m := rm.load(t)
		for si, sc := range scenarios {
			t.Run(a.name+"/"+sc.name, func(t *testing.T) {
				h := newHarness(t, rm, m, 160, uint64(si))
				h.addSeqs(sc.seqs, rand.New(rand.NewPCG(uint64(ai), uint64(si))))
				for i, o := range sc.ops {
					h.do(fmt.Sprintf("op %d", i), o)
				}
			})
		}
	}
}

// TestForwardBlockSizesGQA4 runs the forward pass with Llama 3.1-style grouped-query
// attention (4 query heads per KV head) and llama3 rope scaling at the engine's default
// block size, 16, and at 1 (every position in its own block), with prefix blocks shared
// between sequences, prefill chunks and decode steps, against the float64 reference.
func TestForwardBlockSizesGQA4(t *testing.T) {
	a := testArch{name: "llama-gqa4-llama3", arch: ArchLlama, dim: 128, hidden: 96, layers: 2, heads: 8, kvHeads: 2, vocab: 64,
		maxPos: 256, theta: 500000, eps: 1e-5,
		scaling: map[string]any{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}
	rm := newRefModel(a, 31)
	m := rm.load(t)
	for _, bs := range []int{16, 1} {
		t.Run(fmt.Sprintf("block size %d", bs), func(t *testing.T) {
			rm.a.blockSize = bs
			h := newHarness(t, rm, m, 200, uint64(bs))
			h.addSeqs([]seqDef{{name: "a", n: 70}, {name: "b", n: 62, prefixOf: "a", prefixBlocks: 32 / bs}, {name: "c", n: 40, prefixOf: "a", prefixBlocks: 16 / bs}},
				rand.New(rand.NewPCG(3, uint64(bs))))
			ops := []op{
				step(run{"a", 20, false}), step(run{"a", 20, false}),
				{share: "b", from: "a", blocks: 32 / bs},
				{share: "c", from: "a", blocks: 16 / bs},
				step(run{"b", 5, false}, run{"a", 1, false}, run{"c", 17, false}),
				step(run{"b", 0, false}, run{"a", 1, false}, run{"c", 1, false}),
				step(run{"a", 1, false}, run{"b", 1, false}, run{"c", 1, false}),
				step(run{"c", 1, false}, run{"b", 1, false}, run{"a", 1, false}),
			}
			for i, o := range ops {
				h.do(fmt.Sprintf("op %d", i), o)
			}
		})
	}
}

// TestForwardThreads runs the mixed-batch and prefix scenarios with pools of one thread
// and of more threads than attention work items, so that every way the parallel stages
// split their work is exercised.
func TestForwardThreads(t *testing.T) {
	a := testArchs[1]
	rm := newRefModel(a, 100)
	dir := t.TempDir()
	rm.write(t, dir, nil, nil)
	for _, threads := range []int{1, 3, 64} {
		m, err := Load(dir, cpu.NewPool(threads))
		if err != nil {
			t.Fatal(err)
		}
		for si, sc := range scenarios[2:4] {
			t.Run(fmt.Sprintf("%d threads/%s", threads, sc.name), func(t *testing.T) {
				h := newHarness(t, rm, m, 160, uint64(si))
				h.addSeqs(sc.seqs, rand.New(rand.NewPCG(uint64(threads), uint64(si))))
				for i, o := range sc.ops {
					h.do(fmt.Sprintf("op %d", i), o)
				}
			})
		}
	}
}

// TestForwardSharedRunner reuses one runner and cache across steps of very different
// shapes (buffers grow and shrink) and checks a long single-sequence decode position by
// position, including a step with no logits and an empty batch.
func TestForwardSharedRunner(t *testing.T) {
	a := testArchs[1]
	rm := newRefModel(a, 7)
	m := rm.load(t)
	h := newHarness(t, rm, m, 64, 1)
	h.addSeqs([]seqDef{{name: "a", n: 60}, {name: "b", n: 45}}, rand.New(rand.NewPCG(1, 2)))
	if got := h.r.Forward(nil); len(got) != 0 {
		t.Fatalf("empty batch: %d logits rows", len(got))
	}
	h.do("prefill b", step(run{"b", 45, false}))
	h.do("prefill a", step(run{"a", 30, true}))
	for i := range 30 {
		h.do(fmt.Sprintf("decode %d", i), step(run{"a", 1, false}))
	}
}

// TestForwardWithKVManager takes block tables from engine/kv's Manager with prefix caching,
// as the engine does: a second request sharing a prompt prefix with a finished first one
// starts at the cached blocks and computes only the rest.
func TestForwardWithKVManager(t *testing.T) {
	a := testArchs[2]
	a.blockSize = 4
	rm := newRefModel(a, 11)
	m := rm.load(t)
	mgr, err := kv.New(kv.Config{NumBlocks: 32, BlockSize: a.blockSize, EnablePrefixCaching: true})
	if err != nil {
		t.Fatal(err)
	}
	cache := m.NewKVCache(mgr.NumBlocks(), mgr.BlockSize())
	poisonCache(cache)
	runner := m.NewRunner(cache)
	rng := rand.New(rand.NewPCG(5, 5))
	promptA := randomTokens(rng, 21, a.vocab)
	promptB := append(slices.Clone(promptA[:13]), randomTokens(rng, 6, a.vocab)...)
	newSeq := func(prompt []int32) *serving.Seq {
		return &serving.Seq{Req: &serving.Request{PromptTokens: len(prompt), TokenIDs: prompt, BlockHashes: serving.TokenBlockHashes(prompt, a.blockSize)}}
	}
	compute := func(s *serving.Seq, n int, cached int) []float32 {
		t.Helper()
		if !mgr.Allocate(s, n, cached) {
			t.Fatal("allocation failed")
		}
		if s.NumComputed == 0 {
			s.NumComputed = cached * a.blockSize
		}
		in := SeqInput{Tokens: s.Req.TokenIDs[s.NumComputed : s.NumComputed+n], Pos: s.NumComputed, Blocks: s.Blocks, Logits: true}
		out := runner.Forward([]SeqInput{in})
		s.NumComputed += n
		return out[0]
	}
	sa := newSeq(promptA)
	checkLogits(t, "request A", compute(sa, 21, 0), rm.refForward(promptA)[20])
	mgr.Free(sa) // finished: its blocks stay cached while free

	sb := newSeq(promptB)
	cached := min(mgr.CachedPrefixBlocks(sb.Req.BlockHashes), (len(promptB)-1)/a.blockSize)
	if cached != 3 {
		t.Fatalf("cached prefix blocks = %d, want 3", cached)
	}
	got := compute(sb, len(promptB)-cached*a.blockSize, cached)
	checkLogits(t, "request B after a prefix hit", got, rm.refForward(promptB)[len(promptB)-1])
}

// generate greedily extends prompts by n tokens each, batching them through a runner step
// by step. starts[i] is the step at which sequence i is admitted and chunk the prefill
// chunk size; sequences decode one token per step once their prompt is in. It returns the
// generated ids per sequence.
func generate(t *testing.T, m *Model, bs int, prompts [][]int32, starts []int, chunk, n int) [][]int32 {
	t.Helper()
	cache := m.NewKVCache(128, bs)
	poisonCache(cache)
	r := m.NewRunner(cache)
	type st struct {
		toks   []int32
		done   int // tokens computed
		blocks []int32
		out    []int32
	}
	next := int32(0)
	seqs := make([]*st, len(prompts))
	for i, p := range prompts {
		seqs[i] = &st{toks: slices.Clone(p)}
	}
	for stepNo := 0; ; stepNo++ {
		var batch []SeqInput
		var who []int
		for i, s := range seqs {
			if starts[i] > stepNo || len(s.out) == n {
				continue
			}
			k := min(chunk, len(s.toks)-s.done)
			for len(s.blocks)*bs < s.done+k {
				s.blocks = append(s.blocks, next)
				next++
			}
			batch = append(batch, SeqInput{Tokens: s.toks[s.done : s.done+k], Pos: s.done, Blocks: s.blocks, Logits: s.done+k == len(s.toks)})
			who = append(who, i)
		}
		if len(batch) == 0 {
			break
		}
		out := r.Forward(batch)
		k := 0
		for j, i := range who {
			s := seqs[i]
			s.done += len(batch[j].Tokens)
			if batch[j].Logits {
				id := int32(argmax(out[k]))
				k++
				s.out = append(s.out, id)
				s.toks = append(s.toks, id)
			}
		}
	}
	res := make([][]int32, len(seqs))
	for i, s := range seqs {
		res[i] = s.out
	}
	return res
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// TestGreedyBatchInvariance: greedy generation gives the same ids for a sequence run alone
// as in a batch with others admitted at different steps and prefilled in chunks.
func TestGreedyBatchInvariance(t *testing.T) {
	for _, a := range []testArch{testArchs[1], testArchs[3]} {
		t.Run(a.name, func(t *testing.T) {
			rm := newRefModel(a, 21)
			m := rm.load(t)
			rng := rand.New(rand.NewPCG(9, 9))
			prompts := [][]int32{randomTokens(rng, 11, a.vocab), randomTokens(rng, 3, a.vocab), randomTokens(rng, 17, a.vocab), randomTokens(rng, 7, a.vocab)}
			const n = 20
			batched := generate(t, m, a.blockSize, prompts, []int{0, 2, 3, 9}, 5, n)
			for i, p := range prompts {
				alone := generate(t, m, a.blockSize, [][]int32{p}, []int{0}, len(p), n)[0]
				if diff := cmp.Diff(alone, batched[i]); diff != "" {
					t.Errorf("sequence %d: batched ids differ from alone (-alone +batched):\n%s", i, diff)
				}
			}
			// And the ids are the reference's greedy ids.
			want := slices.Clone(prompts[0])
			for range n {
				logits := rm.refForward(want)
				want = append(want, int32(argmax64(logits[len(logits)-1])))
			}
			if diff := cmp.Diff(want[len(prompts[0]):], batched[0]); diff != "" {
				t.Errorf("sequence 0: ids differ from the reference's greedy ids (-ref +got):\n%s", diff)
			}
		})
	}
}

func argmax64(v []float64) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// TestForwardPanics checks the input validation.
func TestForwardPanics(t *testing.T) {
	rm := newRefModel(testArchs[0], 1)
	m := rm.load(t)
	r := m.NewRunner(m.NewKVCache(4, 4))
	for _, tc := range []struct {
		name string
		in   SeqInput
	}{
		{"token outside vocabulary", SeqInput{Tokens: []int32{96}, Blocks: []int32{0}}},
		{"block table too short", SeqInput{Tokens: []int32{1, 2, 3}, Pos: 3, Blocks: []int32{0}}},
		{"block outside cache", SeqInput{Tokens: []int32{1}, Blocks: []int32{4}}},
		{"logits without tokens", SeqInput{Pos: 2, Blocks: []int32{0}, Logits: true}},
		{"negative position", SeqInput{Tokens: []int32{1}, Pos: -1, Blocks: []int32{0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("Forward did not panic")
				}
			}()
			r.Forward([]SeqInput{tc.in})
		})
	}
}

// TestRopeTableGrows: positions beyond the table built at load time extend it.
func TestRopeTableGrows(t *testing.T) {
	a := testArchs[0]
	rm := newRefModel(a, 3)
	m := rm.load(t)
	small := newRopeTable(m.invFreq, 8)
	m.rope.Store(small)
	h := newHarness(t, rm, m, 16, 2)
	h.addSeqs([]seqDef{{name: "a", n: 20}}, rand.New(rand.NewPCG(4, 4)))
	h.do("prefill", step(run{"a", 20, false}))
	if got := m.rope.Load().n; got < 20 {
		t.Errorf("rope table covers %d positions after a 20-token step", got)
	}
}
