package kvoffload

import (
	"fmt"
	"time"

	"servelab/engine/kv"
)

// BlockIO is the accelerator's KV cache as the mover sees it (model.KVCache).
type BlockIO interface {
	// BlockBytes is one block's contents in bytes.
	BlockBytes() int
	// ReadBlock copies block b's contents into dst (BlockBytes long).
	ReadBlock(b int32, dst []byte)
	// WriteBlock fills block b from src, as ReadBlock wrote it.
	WriteBlock(b int32, src []byte)
}

// TierCounters are the mover's measurements of one tier.
type TierCounters struct {
	Medium string
	// Stored counts blocks written into the tier (offloaded from the accelerator or
	// demoted from the tier above); StoreSeconds is the time those copies took.
	Stored       int64
	StoreSeconds float64
	// Loaded counts blocks loaded back from the tier to the accelerator; LoadSeconds is
	// the time those loads took, reading the tier and writing the accelerator's block.
	Loaded      int64
	LoadSeconds float64
}

// Mover implements kv.Mover over a KV cache and one store per tier, top down as the
// block manager's tiers. It measures every copy. It is not safe for concurrent use: the
// engine loop, which owns the block manager, calls it.
//
// A store that fails (an I/O error on the disk tier's preallocated file: a failing
// device) makes the mover panic: the block manager has already counted the block as
// stored or loaded, and serving a prefix from contents that never arrived would produce
// wrong text silently.
type Mover struct {
	cache      BlockIO
	stores     []Store
	blockBytes int
	staging    [][]byte
	fetched    []time.Duration // each staging buffer's Fetch time
	scratch    []byte
	counters   []TierCounters
	// OnLoad, if set, is called with the time each block's load took (its tier's read and
	// the write into the accelerator's block), from the engine loop.
	OnLoad func(medium string, seconds float64)
}

var _ kv.Mover = (*Mover)(nil)

// NewMover returns a mover between cache and stores, the block manager's tiers in order.
func NewMover(cache BlockIO, stores []Store) (*Mover, error) {
	if len(stores) == 0 {
		return nil, fmt.Errorf("kvoffload: a mover needs at least one tier")
	}
	m := &Mover{cache: cache, stores: stores, blockBytes: cache.BlockBytes(), scratch: NewBuffer(cache.BlockBytes())}
	for _, s := range stores {
		m.counters = append(m.counters, TierCounters{Medium: s.Medium()})
	}
	return m, nil
}

// Counters returns every tier's measurements, top down.
func (m *Mover) Counters() []TierCounters { return append([]TierCounters(nil), m.counters...) }

// Close closes every store.
func (m *Mover) Close() error {
	var first error
	for _, s := range m.stores {
		if err := s.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func must(err error) {
	if err != nil {
		panic(fmt.Sprintf("kvoffload: %v", err))
	}
}

func (m *Mover) Offload(b int32, slot int32) {
	start := time.Now()
	if h, ok := m.stores[0].(*HostStore); ok {
		m.cache.ReadBlock(b, h.slot(slot)[:m.blockBytes])
	} else {
		m.cache.ReadBlock(b, m.scratch[:m.blockBytes])
		must(m.stores[0].Write(slot, m.scratch))
	}
	m.stored(0, start)
}

func (m *Mover) Demote(tier int, from, to int32) {
	start := time.Now()
	src, dst := m.stores[tier], m.stores[tier+1]
	if h, ok := src.(*HostStore); ok {
		must(dst.Write(to, h.slot(from)))
	} else {
		must(src.Read(from, m.scratch))
		must(dst.Write(to, m.scratch))
	}
	m.stored(tier+1, start)
}

func (m *Mover) stored(tier int, start time.Time) {
	c := &m.counters[tier]
	c.Stored++
	c.StoreSeconds += time.Since(start).Seconds()
}

// Fetch reads the slot into staging buffer i; the time is added to the load's in Load.
func (m *Mover) Fetch(tier int, slot int32, i int) {
	start := time.Now()
	for len(m.staging) <= i {
		m.staging = append(m.staging, nil)
	}
	if m.staging[i] == nil {
		m.staging[i] = NewBuffer(m.blockBytes)
	}
	if h, ok := m.stores[tier].(*HostStore); ok {
		// The slot's buffer becomes the staging buffer, and the old staging buffer the
		// slot's: no copy.
		m.staging[i] = h.swap(slot, m.staging[i])
	} else {
		must(m.stores[tier].Read(slot, m.staging[i]))
	}
	for len(m.fetched) <= i {
		m.fetched = append(m.fetched, 0)
	}
	m.fetched[i] = time.Since(start)
}

// Load writes staging buffer i into block b and records the block's load time: its
// Fetch's plus this copy's.
func (m *Mover) Load(tier int, i int, b int32) {
	start := time.Now()
	m.cache.WriteBlock(b, m.staging[i][:m.blockBytes])
	d := (m.fetched[i] + time.Since(start)).Seconds()
	c := &m.counters[tier]
	c.Loaded++
	c.LoadSeconds += d
	if m.OnLoad != nil {
		m.OnLoad(c.Medium, d)
	}
}
