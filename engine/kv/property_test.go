package kv

import (
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies/evict"
	"servelab/serving"
)

// freedPrefix is the cached prompt of a finished sequence, with the blocks that held it:
// until one of them is handed out again, the whole prefix must be found.
type freedPrefix struct {
	hashes []uint64
	blocks []int32
	popped []int // the blocks' pop counts when the sequence was freed
}

// world is one random run: a manager, its tracked policy, the live sequences and what
// the test expects of the cache.
type world struct {
	t     *testing.T
	rng   *rand.Rand
	m     *Manager
	p     *tracked
	log   *eventLog
	live  []*serving.Seq
	freed []freedPrefix
	next  uint64
}

// TestRandomInterleavings runs random admissions (with prefix hits), chunked prefills,
// decode steps, preemptions, finishes and cache resets under every eviction policy, and
// checks the manager's invariants after every operation.
func TestRandomInterleavings(t *testing.T) {
	for _, policy := range evict.Registry.Names() {
		t.Run(policy, func(t *testing.T) {
			for seed := range uint64(3) {
				w := &world{t: t, rng: rand.New(rand.NewPCG(seed, 11)), log: newEventLog()}
				w.p = track(t, buildPolicy(t, policy))
				w.m = newManager(t, w.p, 40, w.log.sink(t))
				for range 4000 {
					w.step()
					w.check()
				}
				for len(w.live) > 0 {
					w.finish(0)
					w.check()
				}
				if w.m.NumFree() != w.m.NumBlocks() {
					t.Errorf("%d of %d blocks free after every sequence ended", w.m.NumFree(), w.m.NumBlocks())
				}
				for b := range w.m.blocks {
					if w.m.blocks[b].ref != 0 {
						t.Errorf("block %d: ref %d after every sequence ended", b, w.m.blocks[b].ref)
					}
				}
			}
		})
	}
}

func (w *world) step() {
	switch r := w.rng.IntN(20); {
	case r < 6:
		w.admit()
	case r < 16 && len(w.live) > 0:
		w.advance(w.live[w.rng.IntN(len(w.live))])
	case r < 19 && len(w.live) > 0:
		w.finish(w.rng.IntN(len(w.live)))
	case r == 19:
		if w.rng.IntN(3) == 0 {
			// Drain the instance now and then, so resets happen and the whole cache is free.
			for len(w.live) > 0 {
				w.finish(len(w.live) - 1)
			}
		}
		want := len(w.live) == 0
		if got := w.m.ResetPrefixCache(); got != want {
			w.t.Fatalf("ResetPrefixCache = %v with %d live sequences", got, len(w.live))
		}
		if want {
			w.freed = w.freed[:0]
		}
	}
}

// admit starts a sequence whose prompt shares a prefix with one of a few groups, and
// schedules a first chunk of it, taking what the cache holds.
func (w *world) admit() {
	w.next++
	tokens := 1 + w.rng.IntN(36)
	s := prompt(w.next, int64(w.rng.IntN(3)), w.rng.IntN(6), tokens)
	if w.rng.IntN(4) == 0 && len(w.freed) > 0 {
		// Re-send a finished prompt: a full hit, its last block recomputed.
		if f := w.freed[w.rng.IntN(len(w.freed))]; len(f.hashes) > 0 {
			s.Req.BlockHashes = f.hashes
			s.Req.PromptTokens = len(f.hashes) * testBlockSize
		}
	}
	s.Req.MaxTokens = w.rng.IntN(10)
	cached := cachedFor(w.m, s)
	remaining := s.Req.PromptTokens - cached*testBlockSize
	n := 1 + w.rng.IntN(remaining)
	if !w.allocate(s, n, cached) {
		return
	}
	s.NumComputed = cached*testBlockSize + n
	w.live = append(w.live, s)
}

// advance schedules the next prefill chunk or decode token of s; out of blocks, it
// sometimes preempts s by recompute as vLLM does.
func (w *world) advance(s *serving.Seq) {
	n := 1
	if rest := s.Req.PromptTokens - s.NumComputed; rest > 0 {
		n = 1 + w.rng.IntN(rest)
	} else if s.NumOutput >= s.Req.MaxTokens {
		return
	}
	if !w.allocate(s, n, 0) {
		if w.rng.IntN(2) == 0 {
			w.m.Free(s)
			s.NumComputed, s.NumOutput = 0, 0
			w.live = slices.DeleteFunc(w.live, func(x *serving.Seq) bool { return x == s })
		}
		return
	}
	if s.NumComputed >= s.Req.PromptTokens {
		s.NumOutput++
	}
	s.NumComputed += n
}

// allocate calls Allocate and checks that a failure changes nothing.
func (w *world) allocate(s *serving.Seq, n, cached int) bool {
	before := snapshot(w.m, w.p, w.log)
	held := len(s.Blocks)
	if w.m.Allocate(s, n, cached) {
		return true
	}
	if need := w.m.blocksFor(s.NumComputed+cached*testBlockSize+n) - held; need <= w.m.NumFree()-w.reclaimable(s, cached) {
		w.t.Fatalf("allocation of %d blocks failed with %d free", need, w.m.NumFree())
	}
	if len(s.Blocks) != held {
		w.t.Fatal("failed allocation changed the block table")
	}
	if after := snapshot(w.m, w.p, w.log); !reflect.DeepEqual(before, after) {
		w.t.Fatalf("failed allocation changed state (-before +after):\n%s", cmp.Diff(before, after, cmp.AllowUnexported(state{}, block{})))
	}
	return false
}

// reclaimable counts the free blocks a prefix hit takes out of the free set.
func (w *world) reclaimable(s *serving.Seq, cached int) int {
	n := 0
	for _, h := range s.Req.BlockHashes[:cached] {
		if b, _ := w.m.cached.Get(h); w.m.blocks[b].ref == 0 {
			n++
		}
	}
	return n
}

func (w *world) finish(i int) {
	s := w.live[i]
	full := min(s.NumComputed/testBlockSize, len(s.Req.BlockHashes))
	f := freedPrefix{hashes: s.Req.BlockHashes[:full], blocks: slices.Clone(s.Blocks[:full])}
	for _, b := range f.blocks {
		f.popped = append(f.popped, w.p.popped[b])
	}
	w.m.Free(s)
	w.live = slices.Delete(w.live, i, i+1)
	if len(s.Blocks) != 0 {
		w.t.Fatal("Free left blocks in the table")
	}
	w.freed = append(w.freed, f)
	if len(w.freed) > 64 {
		w.freed = w.freed[1:]
	}
}

// check verifies the manager against the live sequences, the policy's free set, the
// prefixes freed since, and the event stream.
func (w *world) check() {
	t, m := w.t, w.m
	t.Helper()
	refs := make([]int32, m.NumBlocks())
	for _, s := range w.live {
		if want := m.blocksFor(s.NumComputed); len(s.Blocks) != want {
			t.Fatalf("sequence %d: %d blocks for %d tokens, want %d", s.Req.ID, len(s.Blocks), s.NumComputed, want)
		}
		for i, b := range s.Blocks {
			refs[b]++
			// Every full prompt block of a live sequence holds its hash.
			if i < min(s.NumComputed/testBlockSize, len(s.Req.BlockHashes)) && m.blocks[b].hash != s.Req.BlockHashes[i] {
				t.Fatalf("sequence %d: full prompt block %d is not cached", s.Req.ID, i)
			}
		}
	}
	free := 0
	for b, r := range refs {
		if r != m.blocks[b].ref {
			t.Fatalf("block %d: ref %d, sequences hold it %d times", b, m.blocks[b].ref, r)
		}
		if (r == 0) != w.p.free[b] {
			t.Fatalf("block %d: %d references, in the policy's free set: %v", b, r, w.p.free[b])
		}
		if r == 0 {
			free++
		}
	}
	if free != m.NumFree() || m.evict.Len() != free {
		t.Fatalf("free blocks: counted %d, manager says %d, policy holds %d", free, m.NumFree(), m.evict.Len())
	}
	w.checkCacheMap()
	for _, f := range w.freed {
		evicted := false
		for i, b := range f.blocks {
			evicted = evicted || w.p.popped[b] != f.popped[i]
		}
		if got := m.CachedPrefixBlocks(f.hashes); !evicted && got != len(f.hashes) {
			t.Fatalf("freed prefix of %d blocks, none evicted since: %d found", len(f.hashes), got)
		}
	}
	inCache := 0
	m.cached.Range(func(h uint64, _ int32) bool {
		if !w.log.cached[h] {
			t.Fatalf("hash %x is cached, but the events never stored it or removed it since", h)
		}
		inCache++
		return true
	})
	if inCache != len(w.log.cached) {
		t.Fatalf("replayed events hold %d hashes, the cache %d", len(w.log.cached), inCache)
	}
}

// checkCacheMap verifies that the hash map finds the head of each chain of blocks with
// equal hashes, and that every block with a hash is on its chain.
func (w *world) checkCacheMap() {
	t, m := w.t, w.m
	t.Helper()
	reachable := 0
	m.cached.Range(func(h uint64, b int32) bool {
		if m.blocks[b].hash != h || m.blocks[b].samePrev != none {
			t.Fatalf("cache maps %x to block %d holding %x (not the head of its chain)", h, b, m.blocks[b].hash)
		}
		for prev := none; b != none; prev, b = b, m.blocks[b].sameNext {
			if m.blocks[b].hash != h || m.blocks[b].samePrev != prev {
				t.Fatalf("chain of %x broken at block %d", h, b)
			}
			reachable++
		}
		return true
	})
	hashed := 0
	for _, b := range m.blocks {
		if b.hash != noHash {
			hashed++
		}
	}
	if reachable != hashed {
		t.Fatalf("%d blocks hold a hash but %d are reachable from the cache", hashed, reachable)
	}
}
