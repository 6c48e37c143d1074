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
	m.events(Event{Kind: kind, Hashes: hashes, Medium: m.gpuMedium})
}

// emitOn reports hashes entering or leaving a lower tier.
func (m *Manager) emitOn(medium string, kind EventKind, hashes ...uint64) {
	if m.events != nil {
		m.events(Event{Kind: kind, Hashes: hashes, Medium: medium})
	}
}
