package kv

import (
	"slices"

	"servelab/serving"
)

// EventKind names a KV event after vLLM's kv_events.
type EventKind uint8

const (
	// BlockStored reports hashes that entered the prefix cache.
	BlockStored EventKind = iota
	// BlockRemoved reports hashes that left it.
	BlockRemoved
	// AllBlocksCleared reports that the whole prefix cache was dropped.
	AllBlocksCleared
)

func (k EventKind) String() string {
	switch k {
	case BlockStored:
		return "BlockStored"
	case BlockRemoved:
		return "BlockRemoved"
	case AllBlocksCleared:
		return "AllBlocksCleared"
	}
	return "unknown"
}

// Event reports hashes that entered or left the prefix cache. Unlike vLLM, which reports
// every block, a hash is stored when its first block is cached and removed when its last
// is evicted, so replaying the events gives exactly the set of cached hashes.
type Event struct {
	Kind EventKind
	// Hashes are the block hashes concerned, a BlockStored's in prefix order; nil for
	// AllBlocksCleared. The receiver may keep the slice.
	Hashes []uint64
	// Medium is the tier the hashes entered or left, vLLM's BlockStored/BlockRemoved
	// medium: MediumGPU, MediumCPU or MediumDisk. It is empty (vLLM's None) when the
	// manager has no tiers below the accelerator, so events are as they were before tiers.
	Medium string `json:",omitempty"`
	// Parent is the hash of the block before Hashes[0] in the sequence that stored them,
	// vLLM's BlockStored parent_block_hash; HasParent is false when Hashes[0] is a prompt's
	// first block or the event does not know it (snapshots, lower tiers).
	Parent    uint64 `json:",omitempty"`
	HasParent bool   `json:",omitempty"`
	// Tokens are the token ids of the Hashes' blocks, block size each, vLLM's BlockStored
	// token_ids: set on the accelerator's BlockStored of blocks a request filled (Hashes are
	// then consecutive blocks of it), nil where the event does not know them.
	Tokens []int32 `json:",omitempty"`
}

func (m *Manager) emit(kind EventKind, hashes ...uint64) {
	m.events(Event{Kind: kind, Hashes: m.keep(hashes), Medium: m.gpuMedium})
}

// emitOn reports hashes entering or leaving a lower tier.
func (m *Manager) emitOn(medium string, kind EventKind, hashes ...uint64) {
	if m.events != nil {
		m.events(Event{Kind: kind, Hashes: m.keep(hashes), Medium: medium})
	}
}

// flushStored emits m.stored, consecutive full blocks of s from block start, as one
// BlockStored with their parent and tokens, and empties it.
func (m *Manager) flushStored(s *serving.Seq, start int) {
	if len(m.stored) == 0 {
		return
	}
	ev := Event{Kind: BlockStored, Hashes: m.keep(m.stored), Medium: m.gpuMedium}
	if start > 0 && start <= len(s.Req.BlockHashes) {
		ev.Parent, ev.HasParent = s.Req.BlockHashes[start-1], true
	}
	if end := (start + len(m.stored)) * m.blockSize; end <= len(s.Req.TokenIDs) {
		ev.Tokens = slices.Clone(s.Req.TokenIDs[start*m.blockSize : end])
	}
	m.stored = m.stored[:0]
	m.events(ev)
}

// eventSlab is how many hashes one allocation holds for events' slices.
const eventSlab = 512

// keep copies hashes for an event, which the receiver may keep, into the manager's current
// slab: most events carry one hash (a block evicted), and one allocation per event was the
// bulk of a simulation's garbage. Each copy is capped at its length, so a receiver that
// appends to it cannot write into another's; a slab is collected once no event holds it.
func (m *Manager) keep(hashes []uint64) []uint64 {
	if len(hashes) == 0 {
		return nil
	}
	if cap(m.slab)-len(m.slab) < len(hashes) {
		m.slab = make([]uint64, 0, max(eventSlab, len(hashes)))
	}
	n := len(m.slab)
	m.slab = append(m.slab, hashes...)
	return m.slab[n:len(m.slab):len(m.slab)]
}
