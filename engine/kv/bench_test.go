package kv

import (
	"fmt"
	"testing"

	"servelab/serving"
)

// benchPrompt is a prompt of blocks engine blocks of 16 tokens whose first shared blocks
// are common to every prompt.
func benchPrompt(id uint64, shared, blocks int) *serving.Seq {
	ids := make([]int64, blocks)
	for i := range ids {
		ids[i] = int64(id)<<20 + int64(i)
		if i < shared {
			ids[i] = int64(i)
		}
	}
	tokens := blocks * 16
	return &serving.Seq{
		Req:    &serving.Request{ID: id, PromptTokens: tokens, BlockHashes: serving.TraceBlockHashes(ids, 16, tokens, 16, id)},
		Blocks: make([]int32, 0, blocks+1),
	}
}

func benchManager(b *testing.B, blocks int) *Manager {
	m, err := New(Config{NumBlocks: blocks, EnablePrefixCaching: true})
	if err != nil {
		b.Fatal(err)
	}
	return m
}

func benchAdmit(b *testing.B, m *Manager, s *serving.Seq) {
	cached := min(m.CachedPrefixBlocks(s.Req.BlockHashes), (s.Req.PromptTokens-1)/m.BlockSize())
	if !m.Allocate(s, s.Req.PromptTokens-cached*m.BlockSize(), cached) {
		b.Fatal("admission failed")
	}
	s.NumComputed = s.Req.PromptTokens
}

func BenchmarkAllocate(b *testing.B) {
	// The fast path: the last block has room for the next token.
	b.Run("decode-inside-block", func(b *testing.B) {
		m := benchManager(b, 1024)
		s := benchPrompt(1, 0, 8)
		benchAdmit(b, m, s)
		if !m.Allocate(s, 5, 0) {
			b.Fatal("allocation failed")
		}
		s.NumComputed += 5
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			m.Allocate(s, 1, 0)
		}
	})
	// Decode steps as they come: one in 16 takes a new block.
	b.Run("decode", func(b *testing.B) {
		const blocks = 1 << 12
		m := benchManager(b, blocks)
		s := benchPrompt(1, 0, 8)
		s.Blocks = make([]int32, 0, blocks)
		benchAdmit(b, m, s)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if !m.Allocate(s, 1, 0) {
				// The cache is full: start the sequence over, as a preemption would.
				m.Free(s)
				s.NumComputed = 0
				benchAdmit(b, m, s)
				continue
			}
			s.NumComputed++
		}
	})
	// A 64-block prompt's admission, half of it a prefix hit or none of it, with the
	// cache under eviction pressure from a stream of distinct requests.
	for _, shared := range []int{0, 32} {
		b.Run(fmt.Sprintf("prefill-64-blocks-%d-cached", shared), func(b *testing.B) {
			m := benchManager(b, 1<<12)
			pool := make([]*serving.Seq, 256)
			for i := range pool {
				pool[i] = benchPrompt(uint64(i), shared, 64)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				s := pool[i%len(pool)]
				benchAdmit(b, m, s)
				m.Free(s)
				s.NumComputed = 0
			}
		})
	}
}

// BenchmarkFree frees 64-block sequences, per sequence.
func BenchmarkFree(b *testing.B) {
	m := benchManager(b, 1<<12)
	batch := make([]*serving.Seq, 32)
	for i := range batch {
		batch[i] = benchPrompt(uint64(i), 16, 64)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		k := i % len(batch)
		if k == 0 {
			b.StopTimer()
			for _, s := range batch {
				s.NumComputed = 0
				benchAdmit(b, m, s)
			}
			b.StartTimer()
		}
		m.Free(batch[k])
	}
}

// simFootprint builds n managers of the simulator's size on its 1M-request workload (an
// H100 serving Llama-3.1-8B has about 28,000 blocks of 16 tokens), so that, as there,
// their tables and maps are far beyond the CPU's caches, with a KV-event subscriber when
// events is set; and a pool of 64-block prompts, their first 32 blocks one of 64 shared
// prefixes (`servelab trace synth --prefix-groups 64`).
func simFootprint(b *testing.B, n int, events bool) ([]*Manager, []*serving.Seq) {
	b.Helper()
	ms := make([]*Manager, n)
	for i := range ms {
		cfg := Config{NumBlocks: 28000, EnablePrefixCaching: true}
		if events {
			cfg.Events = func(Event) {}
		}
		m, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		ms[i] = m
	}
	pool := make([]*serving.Seq, 4096)
	for i := range pool {
		pool[i] = benchPrompt(uint64(i), 32, 64)
		g := uint64(i % 64)
		copy(pool[i].Req.BlockHashes, benchPrompt(1<<30+g, 32, 32).Req.BlockHashes)
	}
	return ms, pool
}

// BenchmarkPrefillHandoff is a simulated prefill instance's work per request, on 16
// managers of the simulator's size taken in turn: admit a 64-block prompt (its 32-block
// shared prefix a hit); 256 admissions later, as when its prefill step ends among others,
// free it as the engine core does, hold its blocks for the KV transfer and free them when
// it lands. The hold is CachedPrefixBlocks then Retain, or RetainPrompt hinted with the
// freed block table (what sim.sendKV does).
func BenchmarkPrefillHandoff(b *testing.B) {
	for _, hold := range []string{"lookup-retain", "retain-prompt", "retain-prompt-events"} {
		b.Run(hold, func(b *testing.B) {
			ms, pool := simFootprint(b, 16, hold == "retain-prompt-events")
			const window = 256
			table := make([]int32, 0, 65)
			h := &serving.Seq{Blocks: make([]int32, 0, 65)}
			b.ReportAllocs()
			cpu := startCPU(b)
			b.ResetTimer()
			for i := range b.N + window {
				if i >= window { // the prefill admitted window requests ago ends
					j := i - window
					m, s := ms[j%len(ms)], pool[j%len(pool)]
					table = append(table[:0], s.Blocks...)
					m.Free(s)
					s.NumComputed = 0
					h.Req = s.Req
					var ok bool
					if hold == "lookup-retain" {
						cached := m.CachedPrefixBlocks(s.Req.BlockHashes)
						ok = m.Retain(h, max(0, s.Req.PromptTokens-cached*m.BlockSize()), cached)
					} else {
						ok = m.RetainPrompt(h, table)
					}
					if !ok {
						b.Fatal("hold failed")
					}
					m.Free(h)
				}
				if i < b.N {
					benchAdmit(b, ms[i%len(ms)], pool[i%len(pool)])
				}
			}
			cpu.report(b)
		})
	}
}
