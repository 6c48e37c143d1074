package kv

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/evict"
	"servelab/serving"
)

func newManager(t testing.TB, policy string, blocks int, events func(Event)) *Manager {
	t.Helper()
	e, err := evict.Registry.Build(policies.Spec{Name: policy}, policies.Env{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{NumBlocks: blocks, BlockSize: 4, EnablePrefixCaching: true, Evict: e, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// prompt returns a sequence whose prompt is prefix group g's first shared blocks followed
// by blocks unique to id.
func prompt(id uint64, g int64, shared, tokens int) *serving.Seq {
	ids := make([]int64, 0, tokens/4)
	for i := range shared {
		ids = append(ids, g*1000+int64(i))
	}
	for i := shared; i < tokens/4; i++ {
		ids = append(ids, int64(id)*1_000_000+int64(i))
	}
	return &serving.Seq{Req: &serving.Request{
		ID: id, PromptTokens: tokens, MaxTokens: 8,
		BlockHashes: serving.TraceBlockHashes(ids, 4, tokens, 4, id),
	}}
}

// admit allocates a fresh sequence's prompt the way the engine core does.
func admit(m *Manager, s *serving.Seq) bool {
	cached := min(m.CachedPrefixBlocks(s.Req.BlockHashes), (s.Req.PromptTokens-1)/m.BlockSize())
	if !m.Allocate(s, s.Req.PromptTokens-cached*m.BlockSize(), cached) {
		return false
	}
	s.NumComputed = s.Req.PromptTokens
	return true
}

// checkInvariants verifies the manager's bookkeeping against its policy and its sequences.
func checkInvariants(t *testing.T, m *Manager, live []*serving.Seq) {
	t.Helper()
	refs := make([]int32, m.NumBlocks())
	for _, s := range live {
		for _, b := range s.Blocks {
			refs[b]++
		}
	}
	free := 0
	for b, r := range refs {
		if r != m.blocks[b].ref {
			t.Fatalf("block %d: ref %d, sequences hold it %d times", b, m.blocks[b].ref, r)
		}
		if r == 0 {
			free++
		}
	}
	if free != m.NumFree() || m.evict.Len() != free {
		t.Fatalf("free blocks: counted %d, manager says %d, policy holds %d", free, m.NumFree(), m.evict.Len())
	}
	reachable := 0
	m.cached.Range(func(h uint64, b int32) bool {
		if m.blocks[b].hash != h || m.blocks[b].samePrev != none {
			t.Fatalf("cache maps %x to block %d holding %x (not the head of its chain)", h, b, m.blocks[b].hash)
		}
		// Every block with a hash is reachable from the cache through its chain.
		for ; b != none; b = m.blocks[b].sameNext {
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

// TestRandomInterleavings runs random admissions, decode growth and frees under every
// eviction policy and checks after each operation that no block is both free and
// referenced, that counts return to zero, and that a freed prefix stays findable until
// something evicts it.
func TestRandomInterleavings(t *testing.T) {
	for _, policy := range evict.Registry.Names() {
		t.Run(policy, func(t *testing.T) {
			var stored = map[uint64]bool{}
			m := newManager(t, policy, 48, func(e Event) {
				for _, h := range e.Hashes {
					stored[h] = e.Kind == BlockStored
				}
			})
			rng := rand.New(rand.NewPCG(3, 4))
			var live []*serving.Seq
			for op := range 5000 {
				switch rng.IntN(3) {
				case 0:
					s := prompt(uint64(op), int64(rng.IntN(3)), rng.IntN(4), 4+rng.IntN(40))
					if admit(m, s) {
						live = append(live, s)
						for i := range s.Req.PromptTokens / 4 {
							if !m.cached.Has(s.Req.BlockHashes[i]) {
								t.Fatalf("full prompt block %d of a running sequence is not cached", i)
							}
						}
					} else if len(s.Blocks) != 0 {
						t.Fatal("failed allocation left blocks behind")
					}
				case 1:
					if len(live) > 0 {
						s := live[rng.IntN(len(live))]
						if m.Allocate(s, 1, 0) {
							s.NumComputed++
						}
					}
				default:
					if len(live) > 0 {
						i := rng.IntN(len(live))
						s := live[i]
						m.Free(s)
						live = append(live[:i], live[i+1:]...)
						// Its full prompt blocks are still cached right after the free.
						full := s.Req.PromptTokens / 4
						if got := m.CachedPrefixBlocks(s.Req.BlockHashes[:full]); got != full {
							t.Fatalf("freed prefix of %d blocks: only %d found", full, got)
						}
					}
				}
				checkInvariants(t, m, live)
			}
			for _, s := range live {
				m.Free(s)
			}
			checkInvariants(t, m, nil)
			if m.NumFree() != m.NumBlocks() {
				t.Errorf("%d of %d blocks free after every sequence ended", m.NumFree(), m.NumBlocks())
			}
			// Replaying the events gives exactly the cache's contents.
			var fromEvents, inCache []uint64
			for h, in := range stored {
				if in {
					fromEvents = append(fromEvents, h)
				}
			}
			m.cached.Range(func(h uint64, _ int32) bool {
				inCache = append(inCache, h)
				return true
			})
			less := func(a, b uint64) bool { return a < b }
			if diff := cmp.Diff(inCache, fromEvents, cmpSorted(less)); diff != "" {
				t.Errorf("events disagree with the cache (-cache +events):\n%s", diff)
			}
		})
	}
}

func TestAllocateIsAllOrNothing(t *testing.T) {
	m := newManager(t, "lru", 4, nil)
	a := prompt(1, 0, 0, 12) // 3 blocks
	if !admit(m, a) {
		t.Fatal("first admission failed")
	}
	b := prompt(2, 1, 0, 8) // 2 blocks, 1 free
	if m.Allocate(b, 8, 0) {
		t.Fatal("allocation beyond the free blocks succeeded")
	}
	if len(b.Blocks) != 0 || m.NumFree() != 1 {
		t.Errorf("failed allocation changed state: %d blocks held, %d free", len(b.Blocks), m.NumFree())
	}
}

func TestPrefixHitReusesBlocks(t *testing.T) {
	m := newManager(t, "lru", 16, nil)
	a := prompt(1, 7, 3, 16)
	admit(m, a)
	b := prompt(2, 7, 3, 16)
	if got := m.CachedPrefixBlocks(b.Req.BlockHashes); got != 3 {
		t.Fatalf("shared prefix of 3 blocks: %d cached", got)
	}
	admit(m, b)
	if diff := cmp.Diff(a.Blocks[:3], b.Blocks[:3]); diff != "" {
		t.Errorf("shared blocks differ (-a +b):\n%s", diff)
	}
	if m.NumFree() != 16-5 {
		t.Errorf("%d free blocks, want 11 (4 + 1 new)", m.NumFree())
	}
}

func TestLRUFreesTailFirst(t *testing.T) {
	m := newManager(t, "lru", 4, nil)
	a := prompt(1, 0, 0, 16) // takes all four blocks
	admit(m, a)
	chain := append([]int32(nil), a.Blocks...)
	m.Free(a)
	// Reusing one block must evict the chain's last block, keeping its prefix findable.
	b := prompt(2, 1, 0, 4)
	admit(m, b)
	if b.Blocks[0] != chain[3] {
		t.Errorf("reused block %d, want the chain's tail %d", b.Blocks[0], chain[3])
	}
	if got := m.CachedPrefixBlocks(a.Req.BlockHashes); got != 3 {
		t.Errorf("%d blocks of the freed prefix still cached, want 3", got)
	}
}

func TestNoCachingWhenDisabled(t *testing.T) {
	m, err := New(Config{NumBlocks: 8, BlockSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	a := prompt(1, 0, 2, 12)
	admit(m, a)
	m.Free(a)
	if got := m.CachedPrefixBlocks(a.Req.BlockHashes); got != 0 {
		t.Errorf("caching disabled but %d blocks found", got)
	}
}

func TestBadConfig(t *testing.T) {
	for _, cfg := range []Config{{NumBlocks: 0}, {NumBlocks: 4, BlockSize: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func BenchmarkAllocate(b *testing.B) {
	b.Run("decode", func(b *testing.B) {
		m := newManager(b, "lru", 1<<16, nil)
		s := prompt(1, 0, 0, 64)
		admit(m, s)
		b.ReportAllocs()
		for range b.N {
			if !m.Allocate(s, 1, 0) {
				// The cache is full: start the sequence over, as a preemption would.
				m.Free(s)
				s.NumComputed = 0
				admit(m, s)
				continue
			}
			s.NumComputed++
		}
	})
	for _, shared := range []int{0, 32} {
		b.Run(fmt.Sprintf("prefill-64-blocks-%d-cached", shared), func(b *testing.B) {
			m := newManager(b, "lru", 1<<12, nil)
			b.ReportAllocs()
			for i := range b.N {
				s := prompt(uint64(i), 1, shared, 256)
				admit(m, s)
				m.Free(s)
			}
		})
	}
}
