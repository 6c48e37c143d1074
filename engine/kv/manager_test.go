package kv

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
)

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{NumBlocks: 0}, {NumBlocks: -3}, {NumBlocks: 4, BlockSize: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func TestDefaults(t *testing.T) {
	m, err := New(Config{NumBlocks: 8})
	if err != nil {
		t.Fatal(err)
	}
	if m.BlockSize() != 16 || m.NumBlocks() != 8 || m.NumFree() != 8 || m.Usage() != 0 {
		t.Errorf("block size %d, %d blocks, %d free, usage %v; want 16, 8, 8, 0", m.BlockSize(), m.NumBlocks(), m.NumFree(), m.Usage())
	}
	if m.evict.Len() != 8 {
		t.Errorf("default eviction policy holds %d blocks, want 8", m.evict.Len())
	}
}

func TestAllocateCoversTokens(t *testing.T) {
	tests := []struct {
		name                 string
		computed, held, more int
		wantBlocks, wantFree int
	}{
		{name: "fresh prompt rounds up", more: 9, wantBlocks: 3, wantFree: 13},
		{name: "exact block multiple", more: 8, wantBlocks: 2, wantFree: 14},
		{name: "decode inside the last block", computed: 9, held: 3, more: 1, wantBlocks: 3, wantFree: 13},
		{name: "decode crossing a block boundary", computed: 12, held: 3, more: 1, wantBlocks: 4, wantFree: 12},
		{name: "zero tokens", computed: 4, held: 1, more: 0, wantBlocks: 1, wantFree: 15},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newManager(t, buildPolicy(t, "lru"), 16, nil)
			s := prompt(1, 0, 0, 64)
			if tc.held > 0 && !m.Allocate(s, tc.held*testBlockSize, 0) {
				t.Fatal("setup allocation failed")
			}
			s.NumComputed = tc.computed
			if got := m.BlocksNeeded(s, tc.more); got != tc.wantBlocks-tc.held {
				t.Errorf("BlocksNeeded = %d, want %d", got, tc.wantBlocks-tc.held)
			}
			if !m.Allocate(s, tc.more, 0) {
				t.Fatal("Allocate failed")
			}
			if len(s.Blocks) != tc.wantBlocks || m.NumFree() != tc.wantFree {
				t.Errorf("%d blocks held, %d free; want %d, %d", len(s.Blocks), m.NumFree(), tc.wantBlocks, tc.wantFree)
			}
			if want := 1 - float64(tc.wantFree)/16; m.Usage() != want {
				t.Errorf("Usage = %v, want %v", m.Usage(), want)
			}
		})
	}
}

func TestAllocateIsAllOrNothing(t *testing.T) {
	tests := []struct {
		name string
		// setup leaves the manager in some state; try is the allocation that must fail.
		setup func(t *testing.T, m *Manager)
		try   *serving.Seq
	}{
		{
			name: "new blocks beyond the free ones",
			setup: func(t *testing.T, m *Manager) {
				mustAdmit(t, m, prompt(1, 0, 0, 12)) // 3 of 4 blocks
			},
			try: prompt(2, 1, 0, 8),
		},
		{
			// The prefix is cached in free blocks: taking them uses up free blocks too.
			name: "cached free blocks count against the free ones",
			setup: func(t *testing.T, m *Manager) {
				a := prompt(1, 7, 3, 12)
				mustAdmit(t, m, a)
				m.Free(a)
				mustAdmit(t, m, prompt(2, 0, 0, 4)) // 3 free, all holding the prefix
			},
			try: prompt(3, 7, 3, 16), // 2 cached free blocks + 2 new > 3 free
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log := newEventLog()
			p := track(t, buildPolicy(t, "lru"))
			m := newManager(t, p, 4, log.sink(t))
			tc.setup(t, m)
			before := snapshot(m, p, log)
			cached := cachedFor(m, tc.try)
			if m.Allocate(tc.try, tc.try.Req.PromptTokens-cached*testBlockSize, cached) {
				t.Fatal("allocation beyond the free blocks succeeded")
			}
			if len(tc.try.Blocks) != 0 {
				t.Errorf("failed allocation left %d blocks in the table", len(tc.try.Blocks))
			}
			if diff := cmp.Diff(before, snapshot(m, p, log), cmp.AllowUnexported(state{}, block{})); diff != "" {
				t.Errorf("failed allocation changed state (-before +after):\n%s", diff)
			}
		})
	}
}

// state is everything an allocation may change.
type state struct {
	blocks []block
	free   []bool
	nFree  int
	len    int
	cached int
	events int
}

func snapshot(m *Manager, p *tracked, log *eventLog) state {
	return state{
		blocks: append([]block(nil), m.blocks...),
		free:   append([]bool(nil), p.free...),
		nFree:  m.NumFree(),
		len:    m.evict.Len(),
		cached: m.NumCached(),
		events: len(log.events),
	}
}

func TestPrefixHitSharesBlocks(t *testing.T) {
	p := track(t, buildPolicy(t, "lru"))
	m := newManager(t, p, 16, nil)
	a := prompt(1, 7, 3, 16)
	mustAdmit(t, m, a)
	b := prompt(2, 7, 3, 16)
	if got := m.CachedPrefixBlocks(b.Req.BlockHashes); got != 3 {
		t.Fatalf("shared prefix of 3 blocks: %d cached", got)
	}
	mustAdmit(t, m, b)
	if diff := cmp.Diff(a.Blocks[:3], b.Blocks[:3]); diff != "" {
		t.Errorf("shared blocks differ (-a +b):\n%s", diff)
	}
	if m.NumFree() != 16-5 {
		t.Errorf("%d free blocks, want 11 (4 + 1 new)", m.NumFree())
	}
	// Freeing one sharer keeps the shared blocks referenced; freeing both frees them.
	chain := slices.Clone(a.Blocks)
	m.Free(a)
	if m.NumFree() != 16-4 {
		t.Errorf("%d free blocks after one sharer left, want 12", m.NumFree())
	}
	m.Free(b)
	if m.NumFree() != 16 {
		t.Errorf("%d free blocks after both left, want 16", m.NumFree())
	}
	// Hits and fill order reach the policy: each shared block was hit once, and blocks
	// were filled in prefix order.
	for i, blk := range chain {
		info := p.infos[blk]
		if wantHits := uint32(min(1, 3-i)); !info.Cached || info.Hits != wantHits {
			t.Errorf("block %d of the prompt: %+v, want cached with %d hits", i, info, wantHits)
		}
		if i > 0 && info.Filled <= p.infos[chain[i-1]].Filled {
			t.Errorf("block %d filled before block %d", i, i-1)
		}
	}
}

func TestHitOnFreeCachedBlockTouchesIt(t *testing.T) {
	p := track(t, buildPolicy(t, "lru"))
	m := newManager(t, p, 8, nil)
	a := prompt(1, 7, 2, 12)
	mustAdmit(t, m, a)
	prefix := append([]int32(nil), a.Blocks[:2]...)
	m.Free(a)
	b := prompt(2, 7, 2, 12)
	mustAdmit(t, m, b)
	if diff := cmp.Diff(prefix, b.Blocks[:2]); diff != "" {
		t.Errorf("the hit did not reuse the freed prefix (-want +got):\n%s", diff)
	}
	for _, blk := range prefix {
		if p.free[blk] {
			t.Errorf("hit block %d is still in the policy's free set", blk)
		}
	}
	if m.NumFree() != 8-3 {
		t.Errorf("%d free, want 5", m.NumFree())
	}
}

func TestFullPromptBlocksAreCachedWhenScheduled(t *testing.T) {
	tests := []struct {
		name       string
		chunks     []int // prompt tokens per step, then decode steps of one
		wantCached []int // CachedPrefixBlocks after each step
	}{
		{name: "whole prompt", chunks: []int{10}, wantCached: []int{2}},
		{name: "chunk ends inside a block", chunks: []int{6, 2, 2}, wantCached: []int{1, 2, 2}},
		// The second chunk fills block 1 without needing a new block.
		{name: "chunk fills the last held block", chunks: []int{5, 3}, wantCached: []int{1, 2}},
		{name: "token by token", chunks: []int{1, 1, 1, 1, 1}, wantCached: []int{0, 0, 0, 1, 1}},
		{name: "decode past the prompt caches nothing more", chunks: []int{10, 1, 1, 1, 1, 1, 1}, wantCached: []int{2, 2, 2, 2, 2, 2, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log := newEventLog()
			m := newManager(t, buildPolicy(t, "lru"), 16, log.sink(t))
			s := prompt(1, 0, 0, 10)
			for i, n := range tc.chunks {
				if !m.Allocate(s, n, 0) {
					t.Fatalf("step %d: allocation failed", i)
				}
				s.NumComputed += n
				if got := m.CachedPrefixBlocks(s.Req.BlockHashes); got != tc.wantCached[i] {
					t.Errorf("step %d: %d prompt blocks cached, want %d", i, got, tc.wantCached[i])
				}
			}
			if got := m.NumCached(); got != tc.wantCached[len(tc.wantCached)-1] {
				t.Errorf("%d hashes cached in all, want %d", got, tc.wantCached[len(tc.wantCached)-1])
			}
			if len(log.cached) != m.NumCached() {
				t.Errorf("events stored %d hashes, the cache holds %d", len(log.cached), m.NumCached())
			}
		})
	}
}

func TestEvents(t *testing.T) {
	log := newEventLog()
	m := newManager(t, buildPolicy(t, "lru"), 4, log.sink(t))
	a := prompt(1, 0, 0, 12) // three full blocks
	mustAdmit(t, m, a)
	h := a.Req.BlockHashes
	m.Free(a)
	b := prompt(2, 1, 0, 8) // reuses the free block, then evicts the tail of a
	mustAdmit(t, m, b)
	m.Free(b)
	if !m.ResetPrefixCache() {
		t.Fatal("ResetPrefixCache failed with every block free")
	}
	want := []Event{
		{Kind: BlockStored, Hashes: h[:3]},
		{Kind: BlockRemoved, Hashes: h[2:3]},
		{Kind: BlockStored, Hashes: b.Req.BlockHashes[:2]},
		{Kind: AllBlocksCleared},
	}
	if diff := cmp.Diff(want, log.events); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestRecomputedBlockIsCachedOnce(t *testing.T) {
	log := newEventLog()
	p := track(t, buildPolicy(t, "lru"))
	m := newManager(t, p, 8, log.sink(t))
	a := prompt(1, 7, 2, 8)
	mustAdmit(t, m, a)
	// The same prompt hits one block and recomputes the last, which is full again: the
	// cache keeps a's block for the hash and b's block waits behind it.
	b := prompt(2, 7, 2, 8)
	mustAdmit(t, m, b)
	last := a.Req.BlockHashes[1]
	if a.Blocks[1] == b.Blocks[1] {
		t.Fatal("the last prompt block was shared, not recomputed")
	}
	if head, _ := m.cached.Get(last); head != a.Blocks[1] {
		t.Errorf("hash maps to block %d, want the first holder %d", head, a.Blocks[1])
	}
	if n := len(log.events); n != 1 {
		t.Errorf("%d events, want the one BlockStored of a's prompt", n)
	}
	holders := []int32{a.Blocks[1], b.Blocks[1]}
	m.Free(b)
	m.Free(a)
	// Evict blocks one at a time: the hash must stay cached until both holders are gone.
	for i := 0; m.cached.Has(last); i++ {
		if i == 8 {
			t.Fatal("hash never left the cache")
		}
		if got := m.CachedPrefixBlocks(a.Req.BlockHashes[1:]); got != 1 {
			t.Fatalf("hash cached but not found")
		}
		s := prompt(uint64(10+i), 9, 0, 1)
		mustAdmit(t, m, s)
	}
	if p.popped[holders[0]] == 0 || p.popped[holders[1]] == 0 {
		t.Error("hash left the cache while one of its blocks was never evicted")
	}
	if log.cached[last] {
		t.Error("events still report the evicted hash as cached")
	}
}

func TestLRUFreesTailFirst(t *testing.T) {
	for _, length := range []int{1, 2, 4} {
		m := newManager(t, buildPolicy(t, "lru"), 4, nil)
		a := prompt(1, 0, 0, length*testBlockSize)
		mustAdmit(t, m, a)
		if length < 4 {
			// Hold the other blocks so only the chain is free.
			mustAdmit(t, m, prompt(2, 1, 0, (4-length)*testBlockSize))
		}
		chain := append([]int32(nil), a.Blocks...)
		m.Free(a)
		for k := range length {
			s := prompt(uint64(10+k), 2, 0, 1)
			mustAdmit(t, m, s)
			if want := chain[length-1-k]; s.Blocks[0] != want {
				t.Errorf("chain of %d, eviction %d: block %d, want %d (tail first)", length, k, s.Blocks[0], want)
			}
			if got := m.CachedPrefixBlocks(a.Req.BlockHashes); got != length-1-k {
				t.Errorf("chain of %d after %d evictions: %d blocks still cached, want %d", length, k+1, got, length-1-k)
			}
		}
	}
}

func TestResetPrefixCache(t *testing.T) {
	p := track(t, buildPolicy(t, "lru"))
	m := newManager(t, p, 6, nil)
	a := prompt(1, 0, 0, 12)
	mustAdmit(t, m, a)
	if m.ResetPrefixCache() {
		t.Fatal("reset succeeded while a sequence holds blocks")
	}
	if m.CachedPrefixBlocks(a.Req.BlockHashes) != 3 {
		t.Fatal("a refused reset dropped cached blocks")
	}
	m.Free(a)
	// Order of the free queue before the reset, found by a twin manager.
	twin := newManager(t, buildPolicy(t, "lru"), 6, nil)
	twinA := prompt(1, 0, 0, 12)
	mustAdmit(t, twin, twinA)
	twin.Free(twinA)
	if !m.ResetPrefixCache() {
		t.Fatal("reset refused with every block free")
	}
	if m.NumCached() != 0 || m.CachedPrefixBlocks(a.Req.BlockHashes) != 0 {
		t.Error("cached blocks survived the reset")
	}
	for b := range p.infos {
		if p.infos[b].Cached && p.free[b] {
			// Re-freed blocks were handed back uncached.
			t.Errorf("block %d is free as cached after the reset", b)
		}
	}
	var got, want []int32
	for range 6 {
		s := prompt(9, 1, 0, 1)
		mustAdmit(t, m, s)
		got = append(got, s.Blocks[0])
		w := prompt(9, 1, 0, 1)
		mustAdmit(t, twin, w)
		want = append(want, w.Blocks[0])
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the reset reordered the free queue (-want +got):\n%s", diff)
	}
}

func TestNoCachingWhenDisabled(t *testing.T) {
	log := newEventLog()
	m, err := New(Config{NumBlocks: 8, BlockSize: testBlockSize, Events: log.sink(t)})
	if err != nil {
		t.Fatal(err)
	}
	a := prompt(1, 0, 2, 12)
	mustAdmit(t, m, a)
	m.Free(a)
	if got := m.CachedPrefixBlocks(a.Req.BlockHashes); got != 0 {
		t.Errorf("caching disabled but %d blocks found", got)
	}
	if m.NumCached() != 0 || len(log.events) != 0 {
		t.Errorf("caching disabled but %d hashes cached, %d events", m.NumCached(), len(log.events))
	}
}

func TestCallerMistakesPanic(t *testing.T) {
	tests := []struct {
		name string
		do   func(m *Manager)
	}{
		{name: "prefix for a sequence with blocks", do: func(m *Manager) {
			s := prompt(2, 7, 2, 12)
			m.Allocate(s, 4, 0)
			m.Allocate(s, 4, 1)
		}},
		{name: "prefix longer than the prompt", do: func(m *Manager) {
			m.Allocate(prompt(2, 7, 2, 12), 4, 4)
		}},
		{name: "prefix not cached", do: func(m *Manager) {
			m.Allocate(prompt(2, 8, 2, 12), 4, 1)
		}},
		{name: "double free", do: func(m *Manager) {
			s := prompt(2, 9, 0, 8)
			m.Allocate(s, 8, 0)
			blocks := append([]int32(nil), s.Blocks...)
			m.Free(s)
			s.Blocks = blocks
			m.Free(s)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newManager(t, buildPolicy(t, "lru"), 8, nil)
			mustAdmit(t, m, prompt(1, 7, 2, 12))
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			tc.do(m)
		})
	}
}

func TestDecodeStepDoesNotAllocate(t *testing.T) {
	m := newManager(t, buildPolicy(t, "lru"), 64, func(Event) {})
	s := prompt(1, 0, 0, 10)
	mustAdmit(t, m, s)
	if allocs := testing.AllocsPerRun(100, func() { m.Allocate(s, 1, 0) }); allocs != 0 {
		t.Errorf("a decode step inside a block allocates %v times", allocs)
	}
}
