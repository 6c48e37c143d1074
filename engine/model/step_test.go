package model

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestStepBuild checks the batch layout a step hands to its backend: rows, positions,
// cache slots, the flattened block tables, the attention items split into decode
// sequences and prefill items, the logit rows and which of them are greedy (Greedy without
// Logits asks for nothing).
func TestStepBuild(t *testing.T) {
	c := &Config{Vocab: 100, Heads: 2}
	batch := []SeqInput{
		{Tokens: []int32{1, 2, 3}, Pos: 0, Blocks: []int32{7, 9}, Logits: false, Greedy: true}, // prefill chunk, 1 block used
		{Tokens: []int32{4}, Pos: 5, Blocks: []int32{2, 3, 8}, Logits: true},                   // decode at position 5 (block 3, slot 1)
		{Pos: 4, Blocks: []int32{1}}, // no tokens this step
		{Tokens: make([]int32, 18), Pos: 2, Blocks: []int32{0, 4, 5, 6, 10}, Logits: true, Greedy: true}, // a chunk of 18 after a 2-token prefix
	}
	var st Step
	if err := st.Build(batch, c, 11, 4); err != nil {
		t.Fatal(err)
	}
	slots := []int32{7*4 + 0, 7*4 + 1, 7*4 + 2, 3*4 + 1}
	pos := []int32{0, 1, 2, 5}
	rowSeq := []int32{0, 0, 0, 1}
	for j := range 18 {
		p := 2 + j
		pos = append(pos, int32(p))
		rowSeq = append(rowSeq, 3)
		slots = append(slots, []int32{0, 4, 5, 6, 10}[p/4]*4+int32(p%4))
	}
	want := Step{
		Batch: batch, BlockSize: 4,
		Tokens:    append([]int32{1, 2, 3, 4}, make([]int32, 18)...),
		Pos:       pos,
		RowSeq:    rowSeq,
		Slot:      slots,
		SeqStart:  []int32{0, 3, 4, 4, 22},
		SeqPos:    []int32{0, 5, 4, 2},
		MaxBlocks: 5,
		BlockTables: []int32{
			7, 0, 0, 0, 0, // seq 0 needs 1 block
			2, 3, 0, 0, 0, // seq 1 needs 2
			0, 0, 0, 0, 0, // seq 2 has no tokens
			0, 4, 5, 6, 10,
		},
		Items: []AttnItem{
			{0, 0, 0, 3}, {0, 1, 0, 3},
			{1, 0, 0, 1}, {1, 1, 0, 1},
			{3, 0, 0, 16}, {3, 0, 16, 18}, {3, 1, 0, 16}, {3, 1, 16, 18},
		},
		DecodeSeqs:   []int32{1},
		PrefillItems: []AttnItem{{0, 0, 0, 3}, {0, 1, 0, 3}, {3, 0, 0, 16}, {3, 0, 16, 18}, {3, 1, 0, 16}, {3, 1, 16, 18}},
		LogitRows:    []int32{3, 21},
		GreedyLogits: []int32{1},
		MaxCtx:       20,
	}
	if d := cmp.Diff(want, st); d != "" {
		t.Errorf("layout (-want +got):\n%s", d)
	}

	// Rebuilding reuses the arrays and resets everything.
	if err := st.Build([]SeqInput{{Tokens: []int32{5}, Pos: 0, Blocks: []int32{3}, Logits: true}}, c, 11, 4); err != nil {
		t.Fatal(err)
	}
	want2 := Step{
		Batch: st.Batch, BlockSize: 4, Tokens: []int32{5}, Pos: []int32{0}, RowSeq: []int32{0}, Slot: []int32{12},
		SeqStart: []int32{0, 1}, SeqPos: []int32{0}, MaxBlocks: 1, BlockTables: []int32{3},
		Items: []AttnItem{{0, 0, 0, 1}, {0, 1, 0, 1}}, DecodeSeqs: []int32{0}, PrefillItems: []AttnItem{},
		LogitRows: []int32{0}, GreedyLogits: []int32{}, MaxCtx: 1,
	}
	if d := cmp.Diff(want2, st); d != "" {
		t.Errorf("second layout (-want +got):\n%s", d)
	}
}

// TestStepBuildErrors: inconsistent input is an error naming the sequence, before any
// layout is kept.
func TestStepBuildErrors(t *testing.T) {
	c := &Config{Vocab: 96, Heads: 2}
	for _, tc := range []struct {
		name string
		in   SeqInput
		want string
	}{
		{"token outside vocabulary", SeqInput{Tokens: []int32{96}, Blocks: []int32{0}}, "sequence 0: token 96 outside the vocabulary [0, 96)"},
		{"block table too short", SeqInput{Tokens: []int32{1, 2, 3}, Pos: 3, Blocks: []int32{0}}, "sequence 0: 1 blocks of 4 tokens cannot hold positions [0, 6)"},
		{"block outside cache", SeqInput{Tokens: []int32{1}, Blocks: []int32{4}}, "sequence 0: block 4 outside the cache's 4 blocks"},
		{"logits without tokens", SeqInput{Pos: 2, Blocks: []int32{0}, Logits: true}, "sequence 0 asks for logits but has no tokens"},
		{"negative position", SeqInput{Tokens: []int32{1}, Pos: -1, Blocks: []int32{0}}, "sequence 0: negative position -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st Step
			err := st.Build([]SeqInput{tc.in}, c, 4, 4)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want %q", err, tc.want)
			}
			if st.Batch != nil {
				t.Error("a failed Build keeps the batch")
			}
		})
	}
	var st Step
	if err := st.Build(nil, c, 1<<28, 16); err == nil {
		t.Error("2^32 slots: no error")
	}
}

// recorder is a Kernels that logs its calls; fail makes the call of that index fail.
type recorder struct {
	calls []string
	fail  int
}

var errInjected = errors.New("injected")

func (r *recorder) rec(s string) error {
	r.calls = append(r.calls, s)
	if len(r.calls)-1 == r.fail {
		return errInjected
	}
	return nil
}
func (r *recorder) Begin(st *Step) error        { return r.rec(fmt.Sprintf("begin %d", st.T())) }
func (r *recorder) Embed() error                { return r.rec("embed") }
func (r *recorder) RMSNorm(l int, w Norm) error { return r.rec(fmt.Sprintf("norm %d %d", l, w)) }
func (r *recorder) Linear(l int, w Matrix, in, out Act, acc bool) error {
	return r.rec(fmt.Sprintf("linear %d %d %d->%d %t", l, w, in, out, acc))
}
func (r *recorder) RopeStore(l int) error { return r.rec(fmt.Sprintf("rope %d", l)) }
func (r *recorder) Attention(l int) error { return r.rec(fmt.Sprintf("attn %d", l)) }
func (r *recorder) SwiGLU() error         { return r.rec("swiglu") }
func (r *recorder) Logits() ([][]float32, error) {
	return nil, r.rec("logits")
}

// TestForwardDrivesKernels pins the sequence of kernel calls the shared forward makes
// (the CPU's and the GPU's), and that the first error stops the step.
func TestForwardDrivesKernels(t *testing.T) {
	var st Step
	if err := st.Build([]SeqInput{{Tokens: []int32{1, 2}, Blocks: []int32{0}, Logits: true}}, &Config{Vocab: 4, Heads: 1}, 1, 4); err != nil {
		t.Fatal(err)
	}
	want := []string{"begin 2", "embed"}
	for l := range 2 {
		want = append(want,
			fmt.Sprintf("norm %d 0", l), fmt.Sprintf("linear %d 0 1->2 false", l), fmt.Sprintf("rope %d", l), fmt.Sprintf("attn %d", l),
			fmt.Sprintf("linear %d 1 3->0 true", l),
			fmt.Sprintf("norm %d 1", l), fmt.Sprintf("linear %d 2 1->4 false", l), "swiglu", fmt.Sprintf("linear %d 3 5->0 true", l))
	}
	want = append(want, "logits")
	r := &recorder{fail: -1}
	if _, err := Forward(r, &st, 2); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, r.calls); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	for _, fail := range []int{0, 1, 5, len(want) - 1} {
		r := &recorder{fail: fail}
		if _, err := Forward(r, &st, 2); !errors.Is(err, errInjected) {
			t.Errorf("call %d fails: err = %v", fail, err)
		}
		if len(r.calls) != fail+1 {
			t.Errorf("call %d fails: %d calls made, want %d", fail, len(r.calls), fail+1)
		}
	}
	// An empty step only begins and ends.
	if err := st.Build(nil, &Config{Vocab: 4, Heads: 1}, 1, 4); err != nil {
		t.Fatal(err)
	}
	r = &recorder{fail: -1}
	Forward(r, &st, 2)
	if d := cmp.Diff([]string{"begin 0", "logits"}, r.calls); d != "" {
		t.Errorf("empty step (-want +got):\n%s", d)
	}
}
