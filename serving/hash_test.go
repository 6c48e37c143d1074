package serving

import (
	"testing"
)

func TestTraceBlockHashesMapTraceBlocksOntoEngineBlocks(t *testing.T) {
	// Two Mooncake-style requests sharing their first 512-token block.
	a := TraceBlockHashes([]int64{7, 8}, 512, 1000, 16, 1)
	b := TraceBlockHashes([]int64{7, 9}, 512, 1000, 16, 2)
	if len(a) != 1000/16 || len(b) != 1000/16 {
		t.Fatalf("%d and %d full blocks, want %d", len(a), len(b), 1000/16)
	}
	for i := range 32 {
		if a[i] != b[i] {
			t.Fatalf("engine block %d inside the shared trace block differs", i)
		}
	}
	for i := 32; i < len(a); i++ {
		if a[i] == b[i] {
			t.Fatalf("engine block %d after the shared prefix matches", i)
		}
	}
	seen := map[uint64]bool{}
	for _, h := range a {
		if seen[h] || h == 0 {
			t.Fatalf("hash %x repeats or is zero within one prompt", h)
		}
		seen[h] = true
	}
}

func TestUncoveredBlocksAreUniqueToTheRequest(t *testing.T) {
	a := TraceBlockHashes(nil, 0, 64, 16, 1)
	b := TraceBlockHashes(nil, 0, 64, 16, 2)
	again := TraceBlockHashes(nil, 0, 64, 16, 1)
	for i := range a {
		if a[i] == b[i] {
			t.Errorf("block %d of two requests without hash ids matches", i)
		}
		if a[i] != again[i] {
			t.Errorf("block %d is not reproducible", i)
		}
	}
}

func TestTokenBlockHashesChain(t *testing.T) {
	x := []int32{1, 2, 3, 4, 5, 6, 7, 8, 9}
	y := []int32{1, 2, 3, 4, 0, 6, 7, 8, 9}
	hx, hy := TokenBlockHashes(x, 4), TokenBlockHashes(y, 4)
	if len(hx) != 2 {
		t.Fatalf("%d full blocks of 9 tokens at size 4, want 2", len(hx))
	}
	if hx[0] != hy[0] || hx[1] == hy[1] {
		t.Errorf("a change in block 1 must change its hash and keep block 0's: %x %x", hx, hy)
	}
	// Equal content after different prefixes hashes differently.
	z := []int32{9, 9, 9, 9, 5, 6, 7, 8}
	if hz := TokenBlockHashes(z, 4); hz[1] == hx[1] {
		t.Error("block hash ignores its parent")
	}
}

func TestStepShape(t *testing.T) {
	var st Step
	prefill := &Seq{Req: &Request{PromptTokens: 100}, NumComputed: 40}
	decode := &Seq{Req: &Request{PromptTokens: 10}, NumComputed: 12, NumOutput: 3}
	st.Add(prefill, 60)
	st.Add(decode, 1)
	want := StepShape{PrefillTokens: 60, PrefillSeqs: 1, DecodeSeqs: 1, ContextTokens: 100 + 13, DecodeContextTokens: 13, PrefillAttention: 60 * (40 + 30)}
	if st.Shape != want {
		t.Errorf("shape %+v, want %+v", st.Shape, want)
	}
	st.Reset()
	if !st.Empty() || st.Shape != (StepShape{}) {
		t.Error("Reset left state behind")
	}
}
