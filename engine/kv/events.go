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
}

func (m *Manager) emit(kind EventKind, hashes ...uint64) {
	m.events(Event{Kind: kind, Hashes: hashes})
}
