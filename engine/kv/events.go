package kv

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
