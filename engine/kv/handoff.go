package kv

import (
	"servelab/serving"
)

// RetainPrompt is Retain of s's whole prompt for a fresh sequence, its cached prefix as
// CachedPrefixBlocks finds it:
//
//	cached := m.CachedPrefixBlocks(s.Req.BlockHashes) // 0 without prefix caching
//	m.Retain(s, max(0, s.Req.PromptTokens-cached*m.BlockSize()), cached)
//
// in one pass: hint, the block table of the sequence that just computed the prompt (freed
// since, as the simulator's prefill instance frees a finished prefill before holding its
// blocks for the KV transfer), names the block that held each prompt block, so a block
// still holding its hash is found without a prefix-cache lookup. The hint only saves
// lookups: a block that no longer holds its hash, or none named, is looked up, and a hash
// held by several blocks is taken from the one the cache finds, so the result is exactly
// the two calls' whatever the hint. It panics if s has blocks or computed tokens.
func (m *Manager) RetainPrompt(s *serving.Seq, hint []int32) bool {
	m.checkPrefix(s, 0)
	reclaimed, loads := 0, 0
	m.prefix = m.prefix[:0]
	m.loads = m.loads[:0]
	if m.caching {
		reclaimed, loads = m.lookupHinted(s.Req.BlockHashes, hint)
	}
	cached := len(m.prefix)
	covered := max(0, s.Req.PromptTokens-cached*m.blockSize) + cached*m.blockSize
	return m.commit(s, covered, reclaimed, loads, false)
}

// lookupHinted is CachedPrefixBlocks followed by lookupPrefix of the blocks it counts,
// reading hint[i] first for hashes[i] (see RetainPrompt).
func (m *Manager) lookupHinted(hashes []uint64, hint []int32) (reclaimed, loads int) {
	for i, h := range hashes {
		b := none
		if i < len(hint) {
			if hb := hint[i]; hb >= 0 && int(hb) < len(m.blocks) && m.blocks[hb].hash == h {
				// The block holds h, so h is cached: the cache finds the first block of
				// h's chain of equal blocks (cacheFullBlocks and uncache keep it so).
				for m.blocks[hb].samePrev != none {
					hb = m.blocks[hb].samePrev
				}
				b = hb
			}
		}
		if b == none {
			v, ok := m.cached.Get(h)
			if !ok {
				lvl := -1
				if len(m.tiers) > 0 {
					lvl = m.tierOf(h)
				}
				if lvl < 0 {
					break
				}
				loads++
				m.prefix = append(m.prefix, none)
				m.loads = append(m.loads, int8(lvl))
				continue
			}
			b = v
		}
		if m.blocks[b].ref == 0 {
			reclaimed++
		}
		m.prefix = append(m.prefix, b)
		m.loads = append(m.loads, -1)
	}
	return reclaimed, loads
}
