package gpu

import (
	"errors"
	"strings"
	"testing"

	"servelab/engine/cpu"
	"servelab/engine/model"
	"servelab/engine/sampling"
)

// TestFakeLogitsInPinnedMemory: each step's logits are copied into page-locked host memory
// (MemAllocHost) and returned as slices of it. Load allocates it for MaxNumSeqs rows (with
// devBuf's quarter of headroom); steps that fit reuse it; a step with more rows frees it
// and allocates a larger one; Close frees it. Every step's logits match the CPU engine's
// (float32: greedy tokens identical, logits within 1e-4 relative RMS error).
func TestFakeLogitsInPinnedMemory(t *testing.T) {
	dir := synth(t, preset(t, "tiny"), 17)
	b, d, _, closed := loadFake(t, Options{Dir: dir, NumBlocks: 32, MaxNumBatchedTokens: 64, MaxNumSeqs: 2}, 1<<30)
	cm, err := model.Load(dir, cpu.NewPool(0))
	if err != nil {
		t.Fatal(err)
	}
	runner := cm.NewRunner(cm.NewKVCache(b.NumBlocks(), b.BlockSize()))
	if a, f, _ := d.host.counts(); a != 1 || f != 0 {
		t.Fatalf("after Load: %d host allocations, %d frees; want 1, 0", a, f)
	}
	// Sequence i owns blocks 2i and 2i+1; its first step prefills a prompt of 5+i tokens,
	// its later ones decode the CPU's greedy token.
	type seq struct {
		toks []int32
		pos  int
	}
	seqs := make([]seq, 5)
	for _, st := range []struct {
		name                  string
		seqs                  int // sequences 0..seqs-1 take part, each with a logits row
		wantAllocs, wantFrees int
	}{
		{"2 prefills fit the buffer Load reserved", 2, 1, 0},
		{"2 decodes and 3 prefills grow it", 5, 2, 1},
		{"5 decodes reuse the grown buffer", 5, 2, 1},
		{"1 decode reuses it", 1, 2, 1},
	} {
		batch := make([]model.SeqInput, st.seqs)
		for i := range batch {
			s := &seqs[i]
			if s.toks == nil {
				for j := range 5 + i {
					s.toks = append(s.toks, int32(3+(j*7919+i*104729)%(cm.Config.Vocab-3)))
				}
			}
			batch[i] = model.SeqInput{Tokens: s.toks[s.pos:], Pos: s.pos, Blocks: []int32{int32(2 * i), int32(2*i + 1)}, Logits: true}
		}
		pinnedBefore := d.pinnedDtoH
		g, err := b.Forward(batch)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		c := runner.Forward(append([]model.SeqInput(nil), batch...))
		if len(g) != st.seqs || len(c) != st.seqs {
			t.Fatalf("%s: %d logits rows, CPU %d; want %d", st.name, len(g), len(c), st.seqs)
		}
		for i := range g {
			checkLogits(t, 0, i, Float32, cm.Config, g[i], c[i])
			if gt, ct := argmax(g[i]), argmax(c[i]); gt != ct {
				t.Fatalf("%s, sequence %d: greedy token %d, CPU %d", st.name, i, gt, ct)
			}
			if !d.host.holds(bytesOf(g[i])) {
				t.Errorf("%s: logits row %d is not in a page-locked host allocation", st.name, i)
			}
			s := &seqs[i]
			s.pos = len(s.toks)
			s.toks = append(s.toks, argmax(c[i]))
		}
		if got := d.pinnedDtoH - pinnedBefore; got != 1 || d.pageableDtoH != 0 {
			t.Errorf("%s: %d copies of the logits into page-locked memory (want 1), %d into pageable memory so far (want 0)", st.name, got, d.pageableDtoH)
		}
		if a, f, _ := d.host.counts(); a != st.wantAllocs || f != st.wantFrees {
			t.Errorf("%s: %d host allocations, %d frees so far; want %d, %d", st.name, a, f, st.wantAllocs, st.wantFrees)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if a, f, live := d.host.counts(); f != a || live != 0 || *closed != 1 {
		t.Errorf("after Close: %d host allocations, %d frees, %d live, context destroyed %d times", a, f, live, *closed)
	}
	if n := d.liveAllocs(); len(n) != 0 {
		t.Errorf("after Close: allocations %v left", n)
	}
}

// TestFakeMemAllocHostFailure: a failing cuMemAllocHost fails Load when it reserves the
// logits' page-locked buffer (nothing is left allocated, the context is destroyed), or
// fails the step that outgrows the buffer with the driver's error, which then stops the
// backend as every device error does; Close frees everything.
func TestFakeMemAllocHostFailure(t *testing.T) {
	dir := synth(t, preset(t, "tiny"), 19)
	o := Options{Dir: dir, NumBlocks: 16, MaxNumBatchedTokens: 32, MaxNumSeqs: 2}
	wide := make([]model.SeqInput, 5) // 5 logits rows: more than the 2 (+ a quarter) reserved
	for i := range wide {
		wide[i] = model.SeqInput{Tokens: []int32{int32(3 + i), 4, 5}, Blocks: []int32{int32(i)}, Logits: true}
	}
	for _, tc := range []struct {
		name   string
		failAt int // the failing MemAllocHost call: 1 at Load, 2 the step's
	}{
		{"at Load", 1},
		{"growing in a step", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newFakeDevice(1 << 30)
			d.failCall, d.failAt = "MemAllocHost", tc.failAt
			closed := new(int)
			b, err := load(o, fakeOpener(d, &fakeOps{d: d}, closed))
			if tc.failAt == 1 {
				if !errors.Is(err, errFake) || !strings.Contains(err.Error(), "page-locked host memory") {
					t.Fatalf("Load: err = %v; want the MemAllocHost error", err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				_, err := b.Forward(wide)
				if !errors.Is(err, errFake) || !strings.Contains(err.Error(), "page-locked host memory") {
					t.Fatalf("step with 5 logits rows: err = %v; want the MemAllocHost error", err)
				}
				if _, err := b.Forward(wide[:1]); !errors.Is(err, errFake) {
					t.Errorf("next step: err = %v; want the first error again", err)
				}
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if n := d.liveAllocs(); len(n) != 0 || *closed != 1 {
				t.Errorf("afterwards: allocations %v left, context destroyed %d times", n, *closed)
			}
		})
	}
}

// TestFakeGreedyRowsCopyTokens: ForwardTokens copies the step's argmax tokens (one copy
// of n int32s, into the same page-locked buffer) and only the non-greedy rows' logits, one
// copy per run of consecutive non-greedy rows; a step without greedy rows is Forward's
// single copy with no sl_argmax launch. Tokens are sampling.Argmax of the CPU engine's
// rows, and the non-greedy rows are within float32 rounding of the CPU's.
func TestFakeGreedyRowsCopyTokens(t *testing.T) {
	dir := synth(t, preset(t, "tiny"), 23)
	b, d, ops, _ := loadFake(t, Options{Dir: dir, NumBlocks: 32, MaxNumBatchedTokens: 64, MaxNumSeqs: 6}, 1<<30)
	defer b.Close()
	cm, err := model.Load(dir, cpu.NewPool(0))
	if err != nil {
		t.Fatal(err)
	}
	runner := cm.NewRunner(cm.NewKVCache(b.NumBlocks(), b.BlockSize()))
	const n = 6
	toks := make([][]int32, n)
	for i := range toks {
		for j := range 4 + i {
			toks[i] = append(toks[i], int32(3+(j*7919+i*104729)%(cm.Config.Vocab-3)))
		}
	}
	for step, tc := range []struct {
		greedy       string // row i greedy where greedy[i] is 'g'
		copies, runs int    // device-to-host copies: the tokens' (1 or 0) and each run's
	}{
		{"g.gg..", 1, 2}, // prefill: runs [1] and [4, 6)
		{"......", 0, 1}, // no greedy row: Forward's copy
		{"gggggg", 1, 0}, // every row greedy: the tokens only
		{"..g...", 1, 2},
		{".g.g.g", 1, 3},
	} {
		batch := make([]model.SeqInput, n)
		for i := range batch {
			pos := 0
			if step > 0 {
				pos = len(toks[i]) - 1
			}
			batch[i] = model.SeqInput{Tokens: toks[i][pos:], Pos: pos, Blocks: []int32{int32(2 * i), int32(2*i + 1)}, Logits: true, Greedy: tc.greedy[i] == 'g'}
		}
		copies, argmaxes := d.pinnedDtoH, ops.launches["sl_argmax"]
		g, tk, err := b.ForwardTokens(batch)
		if err != nil {
			t.Fatalf("step %d (%s): %v", step, tc.greedy, err)
		}
		c := runner.Forward(append([]model.SeqInput(nil), batch...))
		if got, want := d.pinnedDtoH-copies, tc.copies+tc.runs; got != want || d.pageableDtoH != 0 {
			t.Errorf("step %d (%s): %d copies into page-locked memory, want %d; %d into pageable memory", step, tc.greedy, got, want, d.pageableDtoH)
		}
		if got := ops.launches["sl_argmax"] - argmaxes; got != tc.copies {
			t.Errorf("step %d (%s): %d sl_argmax launches, want %d", step, tc.greedy, got, tc.copies)
		}
		if len(g) != n {
			t.Fatalf("step %d (%s): %d logits rows, want %d", step, tc.greedy, len(g), n)
		}
		for i := range n {
			want := sampling.Argmax(c[i])
			if batch[i].Greedy {
				if g[i] != nil || tk[i] != want {
					t.Errorf("step %d (%s), row %d: %d logits and token %d; want none and the CPU's argmax %d", step, tc.greedy, i, len(g[i]), tk[i], want)
				}
			} else {
				checkLogits(t, step, i, Float32, cm.Config, g[i], c[i])
				if !d.host.holds(bytesOf(g[i])) {
					t.Errorf("step %d (%s): logits row %d is not in a page-locked host allocation", step, tc.greedy, i)
				}
			}
			toks[i] = append(toks[i], want)
		}
	}
}
