package kv

import (
	"fmt"

	"servelab/policies/evict"
	"servelab/serving"
)

// Allocate extends s's block table so it covers numNewTokens more tokens, and caches the
// prompt blocks those tokens fill. For a fresh sequence, cachedBlocks leading blocks of
// its prompt (as CachedPrefixBlocks found them just before) are taken from the cache
// instead; the caller then counts their tokens as computed. It returns false, changing
// nothing, when the free blocks do not suffice.
func (m *Manager) Allocate(s *serving.Seq, numNewTokens int, cachedBlocks int) bool {
	return m.allocate(s, numNewTokens, cachedBlocks, true)
}

// Retain is Allocate for a sequence that only holds blocks another one just computed (the
// simulator's prefill instance keeping a request's prompt KV until its transfer lands): the
// blocks it takes from the cache are not prefix-cache hits, so the per-tier hit counters
// and LastPrefixHits are left as they are.
func (m *Manager) Retain(s *serving.Seq, numNewTokens int, cachedBlocks int) bool {
	return m.allocate(s, numNewTokens, cachedBlocks, false)
}

func (m *Manager) allocate(s *serving.Seq, numNewTokens int, cachedBlocks int, countHits bool) bool {
	covered := s.NumComputed + numNewTokens
	if cachedBlocks == 0 && covered <= len(s.Blocks)*m.blockSize &&
		(!m.caching || s.NumComputed >= len(s.Req.BlockHashes)*m.blockSize) {
		// Most decode steps: the last block has room, and every prompt block is full
		// and cached already.
		return true
	}
	if cachedBlocks > 0 {
		m.checkPrefix(s, cachedBlocks)
		covered += cachedBlocks * m.blockSize
	}
	reclaimed, loads := m.lookupPrefix(s.Req.BlockHashes[:cachedBlocks])
	return m.commit(s, covered, reclaimed, loads, countHits)
}

// lookupPrefix finds the blocks of hashes, every one of them cached, into m.prefix: the
// accelerator block holding each, or none with the lower tier it is on in m.loads. It
// returns how many of those accelerator blocks are free (taking them uses free blocks) and
// how many hashes are on lower tiers. One lookup per prefix block also checks that the
// caller's count came from CachedPrefixBlocks (a mistake would corrupt reference counts).
func (m *Manager) lookupPrefix(hashes []uint64) (reclaimed, loads int) {
	m.prefix = m.prefix[:0]
	m.loads = m.loads[:0]
	for i, h := range hashes {
		b, ok := m.cached.Get(h)
		if !ok {
			// A block on a lower tier is loaded back into a fresh accelerator block.
			lvl := -1
			if len(m.tiers) > 0 {
				lvl = m.tierOf(h)
			}
			if lvl < 0 {
				panic(fmt.Sprintf("kv: prefix block %d is not cached; cachedBlocks must come from CachedPrefixBlocks", i))
			}
			loads++
			m.prefix = append(m.prefix, none)
			m.loads = append(m.loads, int8(lvl))
			continue
		}
		if m.blocks[b].ref == 0 {
			reclaimed++
		}
		m.prefix = append(m.prefix, b)
		m.loads = append(m.loads, -1)
	}
	return reclaimed, loads
}

// commit takes the prefix lookupPrefix found (m.prefix, m.loads) and the new blocks that
// bring s's table to covered tokens, then caches the prompt blocks they fill; it returns
// false, changing nothing, when the free blocks do not suffice.
func (m *Manager) commit(s *serving.Seq, covered, reclaimed, loads int, countHits bool) bool {
	cachedBlocks := len(m.prefix)
	need := max(0, m.blocksFor(covered)-len(s.Blocks)-cachedBlocks)
	if need+loads+reclaimed > m.free {
		return false
	}
	if cachedBlocks > 0 && countHits {
		clear(m.lastHits)
	}
	// Blocks hit on the accelerator are taken first, so the evictions that make room
	// for loaded blocks cannot take them; loaded hashes leave their tier before those
	// evictions offload other blocks into it.
	for i, b := range m.prefix {
		if b == none {
			lvl := int(m.loads[i])
			slot := m.take(lvl, s.Req.BlockHashes[i])
			if m.mover != nil {
				m.mover.Fetch(lvl, slot, i)
			}
			m.tiers[lvl].stats.Loaded++
			if countHits {
				m.lastHits[1+lvl]++
				m.tiers[lvl].stats.HitBlocks++
			}
			continue
		}
		if m.blocks[b].ref == 0 {
			m.evict.Touch(b)
			m.free--
		}
		m.blocks[b].ref++
		if countHits {
			m.blocks[b].hits++
			m.lastHits[0]++
			m.gpuHits++
		}
	}
	m.stored = m.stored[:0]
	run := 0 // the block m.stored starts at
	for i, b := range m.prefix {
		if b != none && m.events != nil {
			// A hit on the accelerator ends a run of loaded blocks.
			m.flushStored(s, run)
		}
		if b == none {
			b = m.popFree()
			if m.mover != nil {
				m.mover.Load(int(m.loads[i]), i, b)
			}
			h := s.Req.BlockHashes[i]
			blk := &m.blocks[b]
			blk.hash = h
			m.fills++
			blk.filled = m.fills
			m.cached.Put(h, b)
			if m.events != nil {
				if len(m.stored) == 0 {
					run = i
				}
				m.stored = append(m.stored, h)
			}
		}
		s.Blocks = append(s.Blocks, b)
	}
	if m.events != nil {
		m.flushStored(s, run)
	}
	if need > 0 {
		m.popFreeN(s, need)
	}
	if m.caching {
		m.cacheFullBlocks(s, covered)
	}
	return true
}

// checkPrefix panics unless s may take cached blocks: only a sequence without blocks can,
// and no more than its prompt's full blocks.
func (m *Manager) checkPrefix(s *serving.Seq, cachedBlocks int) {
	if len(s.Blocks) != 0 || s.NumComputed != 0 {
		panic("kv: prefix blocks offered to a sequence that already has blocks")
	}
	if cachedBlocks > len(s.Req.BlockHashes) {
		panic(fmt.Sprintf("kv: %d prefix blocks offered for a prompt of %d full blocks", cachedBlocks, len(s.Req.BlockHashes)))
	}
}

// Free releases s's blocks, last block first as vLLM does, so that under LRU a sequence's
// tail is reclaimed before the prefix other requests are likelier to share.
func (m *Manager) Free(s *serving.Seq) {
	if len(s.Blocks) > 1 {
		// Read the blocks together first: one after another, each waits for its cache
		// miss (see popFreeN).
		for _, b := range s.Blocks {
			m.sink += m.blocks[b].filled
		}
	}
	for i := len(s.Blocks) - 1; i >= 0; i-- {
		b := s.Blocks[i]
		blk := &m.blocks[b]
		blk.ref--
		if blk.ref > 0 {
			continue
		}
		if blk.ref < 0 {
			panic(fmt.Sprintf("kv: block %d freed more often than referenced", b))
		}
		m.free++
		info := evict.BlockInfo{Cached: blk.hash != noHash, Hits: blk.hits, Filled: blk.filled, Hash: blk.hash}
		// Prompt blocks are cached in prefix order, so a cached block's predecessor in
		// the table holds the prefix its chained hash extends (radix-lru's parent).
		if info.Cached && i > 0 {
			info.Parent, info.HasParent = s.Blocks[i-1], true
		}
		m.evict.Free(b, info)
	}
	s.Blocks = s.Blocks[:0]
}

// popFreeN appends n blocks to s's table as n calls of popFree would, in two passes: the
// policy's choices first, then their cached contents dropped, after one pass that reads
// the blocks' hashes and their slots in the prefix cache together (the policy does not
// look at the manager's state, so the choices are the same). The simulator's many
// instances keep their tables far beyond the CPU's caches, where one cache miss after
// another was a third of its time.
func (m *Manager) popFreeN(s *serving.Seq, n int) {
	start := len(s.Blocks)
	for range n {
		b, ok := m.evict.Pop()
		if !ok {
			panic("kv: the eviction policy has no block though the free count says it should")
		}
		s.Blocks = append(s.Blocks, b)
	}
	got := s.Blocks[start:]
	if n > 1 && m.cached.Len() > 0 {
		m.scratch = m.scratch[:0]
		for _, b := range got {
			m.scratch = append(m.scratch, m.blocks[b].hash)
		}
		m.sink += m.cached.Prefetch(m.scratch)
	}
	for _, b := range got {
		m.uncache(b)
		m.blocks[b].ref = 1
		m.free--
	}
}

// popFree takes the block the eviction policy gives up, drops (or offloads) its cached
// content and references it once.
func (m *Manager) popFree() int32 {
	b, ok := m.evict.Pop()
	if !ok {
		panic("kv: the eviction policy has no block though the free count says it should")
	}
	m.uncache(b)
	m.blocks[b].ref = 1
	m.free--
	return b
}
