package kv

import (
	"testing"

	"servelab/policies"
	"servelab/policies/evict"
	"servelab/serving"
)

const testBlockSize = 4

func buildPolicy(t testing.TB, name string) evict.Policy {
	t.Helper()
	p, err := evict.Registry.Build(policies.Spec{Name: name}, policies.Env{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newManager(t testing.TB, p evict.Policy, blocks int, events func(Event)) *Manager {
	t.Helper()
	m, err := New(Config{NumBlocks: blocks, BlockSize: testBlockSize, EnablePrefixCaching: true, Evict: p, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// prompt returns a sequence of tokens prompt tokens whose first shared blocks are prefix
// group g's and whose other blocks are its own.
func prompt(id uint64, g int64, shared, tokens int) *serving.Seq {
	ids := make([]int64, 0, tokens/testBlockSize)
	for i := range shared {
		ids = append(ids, g*1000+int64(i))
	}
	for i := shared; i < tokens/testBlockSize; i++ {
		ids = append(ids, int64(id)*1_000_000+int64(i))
	}
	return &serving.Seq{Req: &serving.Request{
		ID: id, PromptTokens: tokens, MaxTokens: 8,
		BlockHashes: serving.TraceBlockHashes(ids, testBlockSize, tokens, testBlockSize, id),
	}}
}

// cachedFor is the prefix a fresh sequence takes from the cache, short of its last prompt
// token as vLLM (and engine/core) recomputes it.
func cachedFor(m *Manager, s *serving.Seq) int {
	return min(m.CachedPrefixBlocks(s.Req.BlockHashes), (s.Req.PromptTokens-1)/m.BlockSize())
}

// admit allocates a fresh sequence's whole prompt the way the engine core does.
func admit(m *Manager, s *serving.Seq) bool {
	cached := cachedFor(m, s)
	if !m.Allocate(s, s.Req.PromptTokens-cached*m.BlockSize(), cached) {
		return false
	}
	s.NumComputed = s.Req.PromptTokens
	return true
}

func mustAdmit(t testing.TB, m *Manager, s *serving.Seq) {
	t.Helper()
	if !admit(m, s) {
		t.Fatalf("admitting request %d failed with %d blocks free", s.Req.ID, m.NumFree())
	}
}

// tracked wraps an eviction policy and checks the manager's use of it: Free only a block
// not free, Touch only a free one, Pop only yields free ones. It remembers what the
// manager told it, and how often each block was handed out.
type tracked struct {
	evict.Policy
	t      testing.TB
	free   []bool
	infos  []evict.BlockInfo
	popped []int // times each block was popped
	pops   []int32
}

func track(t testing.TB, p evict.Policy) *tracked { return &tracked{Policy: p, t: t} }

func (p *tracked) Reset(n int) {
	p.Policy.Reset(n)
	p.free = make([]bool, n)
	for i := range p.free {
		p.free[i] = true
	}
	p.infos = make([]evict.BlockInfo, n)
	p.popped = make([]int, n)
}

func (p *tracked) Free(b int32, info evict.BlockInfo) {
	p.t.Helper()
	if p.free[b] {
		p.t.Fatalf("block %d freed to the policy twice", b)
	}
	p.free[b] = true
	p.infos[b] = info
	p.Policy.Free(b, info)
}

func (p *tracked) Touch(b int32) {
	p.t.Helper()
	if !p.free[b] {
		p.t.Fatalf("block %d touched but not free", b)
	}
	p.free[b] = false
	p.Policy.Touch(b)
}

func (p *tracked) Pop() (int32, bool) {
	p.t.Helper()
	b, ok := p.Policy.Pop()
	if ok {
		if !p.free[b] {
			p.t.Fatalf("policy popped block %d that is not free", b)
		}
		p.free[b] = false
		p.popped[b]++
		p.pops = append(p.pops, b)
	}
	return b, ok
}

// eventLog replays KV events into the set of hashes a subscriber believes cached.
type eventLog struct {
	cached map[uint64]bool
	events []Event
}

func newEventLog() *eventLog { return &eventLog{cached: map[uint64]bool{}} }

func (l *eventLog) sink(t testing.TB) func(Event) {
	return func(e Event) {
		t.Helper()
		l.events = append(l.events, e)
		switch e.Kind {
		case BlockStored:
			for _, h := range e.Hashes {
				if l.cached[h] {
					t.Fatalf("BlockStored for %x, already stored", h)
				}
				l.cached[h] = true
			}
		case BlockRemoved:
			for _, h := range e.Hashes {
				if !l.cached[h] {
					t.Fatalf("BlockRemoved for %x, never stored", h)
				}
				delete(l.cached, h)
			}
		case AllBlocksCleared:
			clear(l.cached)
		}
	}
}
