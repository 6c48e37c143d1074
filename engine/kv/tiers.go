package kv

import (
	"fmt"
	"slices"

	"servelab/policies"
	"servelab/policies/evict"
)

// Mediums name where a cached block lives, as vLLM's KV events name them in their medium
// field (vllm/distributed/kv_events.py: MEDIUM_GPU = "GPU"; the CPU offloading connector
// publishes "CPU"). "DISK" is servelab's name for a file-backed tier.
const (
	MediumGPU  = "GPU"
	MediumCPU  = "CPU"
	MediumDisk = "DISK"
)

// TierConfig is one tier of the KV cache below the accelerator's blocks (vLLM's KV
// offloading, LMCache's and llm-d's CPU and disk tiers): a store of cached block contents,
// found by their chained hashes, that a block evicted from the tier above is offloaded to.
type TierConfig struct {
	// Medium names the tier in KV events: MediumCPU or MediumDisk.
	Medium string
	// Blocks is the tier's capacity in KV blocks.
	Blocks int
	// Evict picks which block leaves the tier when it is full (to the next tier down, or
	// dropped from the last); nil means LRU.
	Evict evict.Policy
}

// TierStats are one tier's counters since the manager was built.
type TierStats struct {
	Medium string
	Blocks int
	// HitBlocks counts prompt blocks that allocations found on this tier when they took a
	// cached prefix (on the GPU tier: blocks reused in place; below: blocks loaded back).
	HitBlocks int64
	// Offloaded counts blocks stored into this tier from the tier above; Loaded (equal to
	// HitBlocks below the GPU) counts blocks loaded back to the accelerator from it.
	Offloaded, Loaded int64
}

// tier is a lower tier: slots holding hashes, occupied slots ordered by the tier's own
// eviction policy (every occupied slot is "free" to it: nothing references a lower tier's
// block), empty slots kept apart so a tier never evicts while it has room. The manager's
// lower map finds a hash's tier and slot.
type tier struct {
	medium string
	evict  evict.Policy
	hashes []uint64
	empty  []int32
	fills  uint64
	stats  TierStats
}

// A lower tier's entry in the manager's lower map packs slot<<tierBits | tier index.
const (
	tierBits      = 3
	maxTiers      = 1<<tierBits - 1
	maxTierBlocks = 1<<(31-tierBits) - 1
)

func newTiers(cfgs []TierConfig, blockSize int) ([]*tier, error) {
	var out []*tier
	seen := map[string]bool{MediumGPU: true}
	for i, c := range cfgs {
		if c.Medium == "" {
			return nil, fmt.Errorf("kv: tier %d: no medium", i)
		}
		if seen[c.Medium] {
			return nil, fmt.Errorf("kv: tier %d: medium %q appears twice", i, c.Medium)
		}
		seen[c.Medium] = true
		if c.Blocks <= 0 || c.Blocks > maxTierBlocks {
			return nil, fmt.Errorf("kv: tier %d (%s): blocks must be in [1, %d], got %d", i, c.Medium, maxTierBlocks, c.Blocks)
		}
		p := c.Evict
		if p == nil {
			var err error
			if p, err = evict.Registry.Build(policies.Spec{Name: "lru"}, policies.Env{BlockSize: blockSize}); err != nil {
				return nil, err
			}
		}
		// Reset makes every block free to a policy; a tier's empty slots are kept apart,
		// so the policy holds occupied slots only.
		p.Reset(c.Blocks)
		for p.Len() > 0 {
			p.Pop()
		}
		t := &tier{medium: c.Medium, evict: p, hashes: make([]uint64, c.Blocks),
			empty: make([]int32, c.Blocks),
			stats: TierStats{Medium: c.Medium, Blocks: c.Blocks}}
		for s := range t.empty {
			t.empty[s] = int32(c.Blocks - 1 - s) // slot 0 is taken first
		}
		out = append(out, t)
	}
	return out, nil
}

// NumTiers is the number of tiers including the accelerator's (1 without offloading).
func (m *Manager) NumTiers() int { return 1 + len(m.tiers) }

// TierStats returns every tier's counters, the accelerator's first.
func (m *Manager) TierStats() []TierStats {
	out := make([]TierStats, 0, 1+len(m.tiers))
	out = append(out, TierStats{Medium: MediumGPU, Blocks: len(m.blocks), HitBlocks: m.gpuHits})
	for _, t := range m.tiers {
		out = append(out, t.stats)
	}
	return out
}

// LastPrefixHits returns, for the last Allocate that took a cached prefix, how many of its
// blocks each tier held (the accelerator's first); the blocks below it were loaded back.
// The slice is reused by the next such Allocate.
func (m *Manager) LastPrefixHits() []int { return m.lastHits }

// tierOf returns the index into m.tiers holding h, or -1.
func (m *Manager) tierOf(h uint64) int {
	v, ok := m.lower.Get(h)
	if !ok {
		return -1
	}
	return int(v & maxTiers)
}

// offload stores h, which just left the tier above, into tier level; the block the tier
// evicts to make room goes one tier further down, or is dropped from the last. from is
// where h's contents are: the accelerator block for level 0, else the slot of tier
// level-1.
func (m *Manager) offload(level int, h uint64, from int32) {
	t := m.tiers[level]
	var slot int32
	if n := len(t.empty); n > 0 {
		slot, t.empty = t.empty[n-1], t.empty[:n-1]
	} else {
		var ok bool
		if slot, ok = t.evict.Pop(); !ok {
			panic("kv: a full tier's eviction policy has no block")
		}
		old := t.hashes[slot]
		m.lower.Delete(old)
		m.emitOn(t.medium, BlockRemoved, old)
		if level+1 < len(m.tiers) {
			m.offload(level+1, old, slot)
		}
	}
	if m.mover != nil {
		if level == 0 {
			m.mover.Offload(from, slot)
		} else {
			m.mover.Demote(level-1, from, slot)
		}
	}
	t.hashes[slot] = h
	m.lower.Put(h, slot<<tierBits|int32(level))
	t.fills++
	t.stats.Offloaded++
	t.evict.Free(slot, evict.BlockInfo{Cached: true, Filled: t.fills, Hash: h})
	m.emitOn(t.medium, BlockStored, h)
}

// take removes h from tier level, as it is loaded back to the accelerator or recomputed
// there: a hash lives on one tier at a time. It returns the slot h occupied.
func (m *Manager) take(level int, h uint64) int32 {
	t := m.tiers[level]
	v, _ := m.lower.Get(h)
	slot := v >> tierBits
	t.evict.Touch(slot)
	m.lower.Delete(h)
	t.hashes[slot] = noHash
	t.empty = append(t.empty, slot)
	m.emitOn(t.medium, BlockRemoved, h)
	return slot
}

func (m *Manager) resetTiers() {
	for _, t := range m.tiers {
		for slot := len(t.hashes) - 1; slot >= 0; slot-- {
			if h := t.hashes[slot]; h != noHash {
				t.evict.Touch(int32(slot))
				t.hashes[slot] = noHash
				t.empty = append(t.empty, int32(slot))
				m.lower.Delete(h)
			}
		}
	}
}

// CachedPrefixWeight implements serving.TieredPrefixCache: CachedPrefixBlocks's blocks,
// each weighted by its tier's medium (the accelerator's is MediumGPU when there are tiers,
// else "").
func (m *Manager) CachedPrefixWeight(hashes []uint64, weight func(medium string) float64) float64 {
	if !m.caching {
		return 0
	}
	w, gpu := 0.0, weight(m.gpuMedium)
	for _, h := range hashes {
		if m.cached.Has(h) {
			w += gpu
			continue
		}
		lvl := -1
		if len(m.tiers) > 0 {
			lvl = m.tierOf(h)
		}
		if lvl < 0 {
			break
		}
		w += weight(m.tiers[lvl].medium)
	}
	return w
}

// SnapshotEvents are the events a new KV-event subscriber starts from: AllBlocksCleared,
// then one BlockStored per tier that holds hashes, the accelerator's first, each naming
// its tier's medium (none without tiers, as every event then), hashes sorted. Replayed,
// they give CachedHashes, tier by tier.
func (m *Manager) SnapshotEvents() []Event {
	out := []Event{{Kind: AllBlocksCleared}}
	gpu := make([]uint64, 0, m.cached.Len())
	m.cached.Range(func(h uint64, _ int32) bool {
		gpu = append(gpu, h)
		return true
	})
	slices.Sort(gpu)
	out = append(out, Event{Kind: BlockStored, Hashes: gpu, Medium: m.gpuMedium})
	for _, t := range m.tiers {
		var hs []uint64
		for _, h := range t.hashes {
			if h != noHash {
				hs = append(hs, h)
			}
		}
		if len(hs) > 0 {
			slices.Sort(hs)
			out = append(out, Event{Kind: BlockStored, Hashes: hs, Medium: t.medium})
		}
	}
	return out
}
