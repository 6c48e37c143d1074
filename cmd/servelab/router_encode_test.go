package main

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/engine/tokenizer"
)

// TestRouterEncodeBounded: the router encodes a huge prompt no further than the model's
// context allows (it was 333 MB of allocations for a 10 MB prompt), matching the engine's
// encoding on that prefix, and not at all once the client has left.
func TestRouterEncodeBounded(t *testing.T) {
	dir := synthTiny(t)
	f := routerFlags{spec: "round-robin", blockSize: 16, model: dir}
	cfg, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	limit, err := promptTokenLimit(dir, tok)
	if err != nil {
		t.Fatal(err)
	}
	short := "The quick brown fox jumps over the lazy dog. "
	if diff := cmp.Diff(tok.Encode(short, true), cfg.Encode(context.Background(), short)); diff != "" {
		t.Errorf("Encode(short) differs from the engine's (-engine +router):\n%s", diff)
	}
	huge := strings.Repeat(short, 10<<20/len(short))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ids := cfg.Encode(context.Background(), huge)
	runtime.ReadMemStats(&after)
	if len(ids) > limit+1 {
		t.Errorf("Encode(10 MB) = %d ids, want at most max_position_embeddings+1 = %d", len(ids), limit+1)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("Encode(10 MB) allocated %d MB", alloc>>20)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if ids := cfg.Encode(ctx, short); len(ids) != 0 {
		t.Errorf("Encode after the client left = %d ids", len(ids))
	}
}
