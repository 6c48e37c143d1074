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
