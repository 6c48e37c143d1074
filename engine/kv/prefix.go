package kv

import (
	"slices"

	"servelab/internal/blockmap"
	"servelab/policies/evict"
	"servelab/serving"
)

// CachedPrefixBlocks returns how many leading blocks of hashes are in the prefix cache,
// referenced or free, on the accelerator or on a tier below it (from which Allocate loads
// them back); 0 when prefix caching is off. It implements serving.PrefixCache.
func (m *Manager) CachedPrefixBlocks(hashes []uint64) int {
	if !m.caching {
		return 0
	}
	// The slots of a few hashes are read together before they are looked up one by one
	// (blockmap.Map.Prefetch): the lookups stop at the first miss, so the chunk is small.
	for i := 0; i < len(hashes); i += prefetchChunk {
		chunk := hashes[i:min(i+prefetchChunk, len(hashes))]
		if len(chunk) > 1 {
			m.sink += m.cached.Prefetch(chunk)
		}
		for j, h := range chunk {
			if !m.cached.Has(h) && (len(m.tiers) == 0 || m.tierOf(h) < 0) {
				return i + j
			}
		}
	}
	return len(hashes)
}

// prefetchChunk is how many hashes' slots CachedPrefixBlocks reads ahead.
const prefetchChunk = 8

// cacheFullBlocks registers the prompt blocks that the first covered tokens fill, as vLLM
// v1 does when it schedules them.
func (m *Manager) cacheFullBlocks(s *serving.Seq, covered int) {
	full := min(covered/m.blockSize, len(s.Req.BlockHashes), len(s.Blocks))
	// Blocks are cached in prefix order, so the new ones follow the last cached one.
	first := full
	for first > 0 && m.blocks[s.Blocks[first-1]].hash == noHash {
		first--
	}
	if full-first > 1 {
		m.sink += m.cached.Prefetch(s.Req.BlockHashes[first:full])
	}
	m.stored = m.stored[:0]
	run := first // the block m.stored starts at
	for i := first; i < full; i++ {
		b, h := s.Blocks[i], s.Req.BlockHashes[i]
		blk := &m.blocks[b]
		blk.hash = h
		blk.hits = 0
		m.fills++
		blk.filled = m.fills
		if head, dup := m.cached.PutIfAbsent(h, b); dup {
			// Another block holds this content: chain behind it and keep it as the one
			// the cache finds, so the hash is stored once.
			next := m.blocks[head].sameNext
			blk.samePrev, blk.sameNext = head, next
			if next != none {
				m.blocks[next].samePrev = b
			}
			m.blocks[head].sameNext = b
			if m.events != nil {
				// Stored events carry consecutive blocks, as vLLM's token_ids need.
				m.flushStored(s, run)
			}
			continue
		}
		if len(m.tiers) > 0 {
			// Recomputed content that a lower tier also holds (its lookup stopped at an
			// earlier block) moves up: a hash lives on one tier at a time. Its removal is
			// reported before the accelerator's store, so replayed events stay exact.
			if lvl := m.tierOf(h); lvl >= 0 {
				m.take(lvl, h)
			}
		}
		if m.events != nil {
			if len(m.stored) == 0 {
				run = i
			}
			m.stored = append(m.stored, h)
		}
	}
	if m.events != nil {
		m.flushStored(s, run)
	}
}

// uncache drops a block's cached content before the block is reused. The hash leaves the
// cache only with the last block that holds it.
func (m *Manager) uncache(b int32) {
	blk := &m.blocks[b]
	h := blk.hash
	if h == noHash {
		return
	}
	prev, next := blk.samePrev, blk.sameNext
	if next != none {
		m.blocks[next].samePrev = prev
	}
	switch {
	case prev != none:
		m.blocks[prev].sameNext = next
	case next != none:
		m.cached.Put(h, next)
	default:
		m.cached.Delete(h)
		if m.events != nil {
			m.emit(BlockRemoved, h)
		}
		if len(m.tiers) > 0 {
			m.offload(0, h, b)
		}
	}
	blk.hash, blk.hits = noHash, 0
	blk.samePrev, blk.sameNext = none, none
}

// ResetPrefixCache drops every cached prefix, as vLLM's reset_prefix_cache does after a
// weight update or between benchmark runs. Like vLLM it refuses, returning false, while
// any block is referenced. Free blocks keep their place in the eviction order, now as
// uncached blocks.
func (m *Manager) ResetPrefixCache() bool {
	if m.free != len(m.blocks) {
		return false
	}
	order := make([]int32, 0, len(m.blocks))
	for {
		b, ok := m.evict.Pop()
		if !ok {
			break
		}
		order = append(order, b)
	}
	for i := range m.blocks {
		m.blocks[i] = block{samePrev: none, sameNext: none}
	}
	for _, b := range order {
		m.evict.Free(b, evict.BlockInfo{})
	}
	m.cached = blockmap.New(len(m.blocks))
	m.resetTiers()
	if m.events != nil {
		m.emit(AllBlocksCleared)
	}
	return true
}

// CachedHashes lists the hashes in the prefix cache, on every tier, sorted, for a subscriber to KV
// events that needs a snapshot to start from.
func (m *Manager) CachedHashes() []uint64 {
	out := make([]uint64, 0, m.cached.Len())
	m.cached.Range(func(h uint64, _ int32) bool {
		out = append(out, h)
		return true
	})
	if m.lower != nil {
		m.lower.Range(func(h uint64, _ int32) bool {
			out = append(out, h)
			return true
		})
	}
	slices.Sort(out)
	return out
}
