package router

import (
	"testing"

	"servelab/internal/kvevents"
	"servelab/serving"
)

// TestZMQIndexKeysForeignHashes: a vLLM engine's block hashes are its own (sha256 or
// Python's hash, with its own seed), never the router's prompt hashes. As llm-d-kv-cache
// does, the router keys each stored block by its token ids, chained from the parent's key,
// so a prompt's hashes find the blocks; BlockRemoved (by engine hash) and later blocks whose
// parent is an engine hash are mapped through what was stored.
func TestZMQIndexKeysForeignHashes(t *testing.T) {
	const bs = 4
	tokens := []int32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	want := serving.TokenBlockHashes(tokens, bs) // the router's hashes of the prompt
	gpu := kvevents.MediumGPU
	parent := uint64(0xa2)
	e := &endpoint{url: "http://engine", logf: t.Logf}
	z := &zmqIndex{e: e, blockSize: bs, keys: map[uint64]uint64{}}
	batch := func(seq uint64, evs ...kvevents.Event) kvevents.Message {
		return kvevents.Message{Seq: seq, Batch: kvevents.Batch{TS: 1, Events: evs}}
	}
	steps := []struct {
		msg  kvevents.Message
		want int // CachedPrefixBlocks of the prompt after it
	}{
		{batch(0, kvevents.Event{Type: kvevents.BlockStored, BlockHashes: []uint64{0xa1, 0xa2}, TokenIDs: tokens[:8], BlockSize: bs, Medium: &gpu}), 2},
		{batch(1, kvevents.Event{Type: kvevents.BlockStored, BlockHashes: []uint64{0xa3}, ParentBlockHash: &parent, TokenIDs: tokens[8:], BlockSize: bs}), 3},
		{batch(2, kvevents.Event{Type: kvevents.BlockRemoved, BlockHashes: []uint64{0xa2}, Medium: &gpu}), 1},
		{batch(3, kvevents.Event{Type: kvevents.AllBlocksCleared}), 0},
	}
	for i, s := range steps {
		if err := z.apply(s.msg); err != nil {
			t.Fatal(err)
		}
		if got := e.cached.CachedPrefixBlocks(want); got != s.want {
			t.Errorf("after batch %d: the prompt's cached prefix = %d blocks, want %d", i, got, s.want)
		}
	}
	if len(z.keys) != 0 {
		t.Errorf("after AllBlocksCleared the engine-hash map holds %d entries", len(z.keys))
	}
}
