package kv

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
)

// TestBlockStoredCarriesParentAndTokens: a BlockStored of blocks a request filled names the
// hash of the block before them (vLLM's parent_block_hash; none for the prompt's first
// block) and their token ids, block size each (token_ids), chunk by chunk as they fill.
func TestBlockStoredCarriesParentAndTokens(t *testing.T) {
	var got []Event
	m := newManager(t, buildPolicy(t, "lru"), 16, func(e Event) { got = append(got, e) })
	tokens := []int32{10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22}
	h := serving.TokenBlockHashes(tokens, testBlockSize)
	s := &serving.Seq{Req: &serving.Request{ID: 1, PromptTokens: len(tokens), MaxTokens: 4, BlockHashes: h, TokenIDs: tokens}}
	if !m.Allocate(s, 8, 0) { // a first chunk of two blocks
		t.Fatal("allocate")
	}
	s.NumComputed = 8
	if !m.Allocate(s, 5, 0) { // the rest: one more full block
		t.Fatal("allocate")
	}
	want := []Event{
		{Kind: BlockStored, Hashes: h[:2], Tokens: tokens[:8]},
		{Kind: BlockStored, Hashes: h[2:3], Parent: h[1], HasParent: true, Tokens: tokens[8:12]},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}
