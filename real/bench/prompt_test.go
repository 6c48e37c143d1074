package bench

import (
	"math/rand/v2"
	"slices"
	"testing"

	"servelab/serving"
	"servelab/traces"
)

func TestPromptLengthRangeAndDeterminism(t *testing.T) {
	for _, tc := range []struct {
		name string
		row  traces.Row
	}{
		{"no hash ids", traces.Row{InputTokens: 100}},
		{"covered exactly", traces.Row{InputTokens: 48, HashIDs: []int64{1, 2, 3}, HashBlockSize: 16}},
		{"partial last block", traces.Row{InputTokens: 40, HashIDs: []int64{1, 2, 3}, HashBlockSize: 16}},
		{"ids cover less than the prompt", traces.Row{InputTokens: 1000, HashIDs: []int64{7}, HashBlockSize: 512}},
		{"one token", traces.Row{InputTokens: 1, HashIDs: []int64{9}, HashBlockSize: 512}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const vocab = 40
			p := Prompt(tc.row, 5, 1, vocab)
			if len(p) != tc.row.InputTokens {
				t.Fatalf("%d tokens, want %d", len(p), tc.row.InputTokens)
			}
			for i, id := range p {
				if id < FirstTokenID || id >= vocab {
					t.Fatalf("token %d is %d, outside [%d, %d)", i, id, FirstTokenID, vocab)
				}
			}
			if again := Prompt(tc.row, 5, 1, vocab); !slices.Equal(p, again) {
				t.Error("the same row, id and seed gave another prompt")
			}
			if len(p) >= 16 && slices.Equal(p, Prompt(tc.row, 5, 2, vocab)) {
				t.Error("another seed gave the same prompt")
			}
		})
	}
}

func TestPromptSharesExactlyTheHashPrefix(t *testing.T) {
	const vocab = 32000
	for _, tc := range []struct {
		name       string
		a, b       traces.Row
		wantShared int // tokens
	}{
		{"no hash ids", traces.Row{InputTokens: 64}, traces.Row{InputTokens: 64}, 0},
		{"same ids", traces.Row{InputTokens: 64, HashIDs: []int64{1, 2, 3, 4}, HashBlockSize: 16},
			traces.Row{InputTokens: 64, HashIDs: []int64{1, 2, 3, 4}, HashBlockSize: 16}, 64},
		{"diverge at block 2", traces.Row{InputTokens: 64, HashIDs: []int64{1, 2, 3, 4}, HashBlockSize: 16},
			traces.Row{InputTokens: 64, HashIDs: []int64{1, 2, 5, 6}, HashBlockSize: 16}, 32},
		{"first block differs", traces.Row{InputTokens: 64, HashIDs: []int64{1, 2}, HashBlockSize: 32},
			traces.Row{InputTokens: 64, HashIDs: []int64{3, 2}, HashBlockSize: 32}, 0},
		{"shorter prompt inside a shared block", traces.Row{InputTokens: 700, HashIDs: []int64{8, 9}, HashBlockSize: 512},
			traces.Row{InputTokens: 600, HashIDs: []int64{8, 9}, HashBlockSize: 512}, 600},
		{"ids past the prompt's end", traces.Row{InputTokens: 20, HashIDs: []int64{1, 2, 3}, HashBlockSize: 16},
			traces.Row{InputTokens: 48, HashIDs: []int64{1, 2, 3}, HashBlockSize: 16}, 20},
		{"uncovered tails are the requests' own", traces.Row{InputTokens: 100, HashIDs: []int64{1}, HashBlockSize: 16},
			traces.Row{InputTokens: 100, HashIDs: []int64{1}, HashBlockSize: 16}, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := Prompt(tc.a, 1, 42, vocab), Prompt(tc.b, 2, 42, vocab)
			shared := 0
			for shared < min(len(a), len(b)) && a[shared] == b[shared] {
				shared++
			}
			// A random token may repeat by chance (1 in vocab); a block of them never does.
			if shared < tc.wantShared || shared > tc.wantShared+2 {
				t.Errorf("prompts share %d leading tokens, want %d", shared, tc.wantShared)
			}
		})
	}
}

// TestPromptMatchesSimulatedPrefixCache checks the property the simulator relies on: at
// an engine block size dividing the trace's, the real prompts share exactly the engine
// blocks serving.TraceBlockHashes says they share.
func TestPromptMatchesSimulatedPrefixCache(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const engineBlock = 16
	sharing := 0
	for trial := range 2000 {
		traceBlock := []int{16, 32, 64, 512}[rng.IntN(4)]
		row := func(prefix []int64) traces.Row {
			n := 1 + rng.IntN(4*traceBlock)
			ids := slices.Clone(prefix)
			for len(ids)*traceBlock < n && rng.IntN(8) > 0 {
				ids = append(ids, 1000+rng.Int64N(4)) // few ids: repeats at other positions
			}
			if len(ids) == 0 {
				return traces.Row{InputTokens: n}
			}
			return traces.Row{InputTokens: n, HashIDs: ids, HashBlockSize: traceBlock}
		}
		var prefix []int64
		for range rng.IntN(4) {
			prefix = append(prefix, rng.Int64N(3))
		}
		a, b := row(prefix), row(prefix)
		ta, tb := Prompt(a, 1, 7, 512), Prompt(b, 2, 7, 512)
		real := sharedLeading(serving.TokenBlockHashes(ta, engineBlock), serving.TokenBlockHashes(tb, engineBlock))
		simulated := sharedLeading(
			serving.TraceBlockHashes(a.HashIDs, a.HashBlockSize, a.InputTokens, engineBlock, 1),
			serving.TraceBlockHashes(b.HashIDs, b.HashBlockSize, b.InputTokens, engineBlock, 2))
		if real != simulated {
			t.Fatalf("trial %d: rows %+v and %+v share %d engine blocks of real prompt, %d simulated", trial, a, b, real, simulated)
		}
		if real > 0 {
			sharing++
		}
	}
	if sharing < 500 {
		t.Errorf("only %d of 2000 pairs share a block: the test checks too little", sharing)
	}
}

func sharedLeading(a, b []uint64) int {
	n := 0
	for n < min(len(a), len(b)) && a[n] == b[n] {
		n++
	}
	return n
}
