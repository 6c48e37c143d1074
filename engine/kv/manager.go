// Package kv is the paged KV-cache block manager: fixed-size blocks with reference counts,
// chained block hashes for prefix caching, and eviction of cached blocks through a
// policies/evict policy. The simulator and the real engine share it.
package kv

import (
	"fmt"

	"servelab/internal/blockmap"
	"servelab/policies"
	"servelab/policies/evict"
	"servelab/serving"
)

// Config sizes a block manager.
type Config struct {
	// NumBlocks is the number of KV blocks.
	NumBlocks int
	// BlockSize is tokens per block; 0 means 16, vLLM's default.
	BlockSize int
	// EnablePrefixCaching is vLLM's --enable-prefix-caching.
	EnablePrefixCaching bool
	// Evict orders free blocks for reuse; nil means vLLM's LRU.
	Evict evict.Policy
	// Events, if set, receives a KV event for every block stored in or removed from the
	// prefix cache, as vLLM publishes them for routers.
	Events func(Event)
}

// EventKind names a KV event after vLLM's kv_events.
type EventKind uint8

const (
	BlockStored EventKind = iota
	BlockRemoved
)

func (k EventKind) String() string {
	if k == BlockStored {
		return "BlockStored"
	}
	return "BlockRemoved"
}

// Event reports blocks that entered or left the prefix cache.
type Event struct {
	Kind   EventKind
	Hashes []uint64
}

const noHash = 0

// Manager owns the blocks of one engine instance.
type Manager struct {
	blockSize int
	caching   bool
	evict     evict.Policy
	events    func(Event)

	// blocks holds each block's bookkeeping in one struct, so touching a block costs one
	// cache line: at 64 instances the simulator's working set is far beyond the caches.
	blocks []block
	fills  uint64
	// cached maps a hash to one block holding it. Blocks with equal content (a prompt
	// recomputing its last block, or a prefix whose head was evicted while its tail
	// stayed) are chained through samePrev/sameNext, so evicting one keeps the others
	// findable, as vLLM keeps several blocks per hash.
	cached *blockmap.Map
	free   int
}

type block struct {
	hash               uint64 // noHash when the block holds no cached prefix block
	filled             uint64
	ref                int32
	hits               uint32
	samePrev, sameNext int32
}

// New builds a manager with every block free.
func New(cfg Config) (*Manager, error) {
	if cfg.NumBlocks <= 0 {
		return nil, fmt.Errorf("kv: number of blocks must be positive, got %d", cfg.NumBlocks)
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 16
	}
	if cfg.BlockSize < 0 {
		return nil, fmt.Errorf("kv: block size must be positive, got %d", cfg.BlockSize)
	}
	if cfg.Evict == nil {
		p, err := evict.Registry.Build(policies.Spec{Name: "lru"}, policies.Env{})
		if err != nil {
			return nil, err
		}
		cfg.Evict = p
	}
	m := &Manager{
		blockSize: cfg.BlockSize,
		caching:   cfg.EnablePrefixCaching,
		evict:     cfg.Evict,
		events:    cfg.Events,
		blocks:    make([]block, cfg.NumBlocks),
		cached:    blockmap.New(cfg.NumBlocks),
		free:      cfg.NumBlocks,
	}
	m.evict.Reset(cfg.NumBlocks)
	return m, nil
}

// BlockSize is tokens per block.
func (m *Manager) BlockSize() int { return m.blockSize }

// NumBlocks is the total number of blocks.
func (m *Manager) NumBlocks() int { return len(m.blocks) }

// NumFree is the number of unreferenced blocks, cached or not.
func (m *Manager) NumFree() int { return m.free }

// NumCached is the number of blocks holding a cached prefix block.
func (m *Manager) NumCached() int { return m.cached.Len() }

// Usage is vLLM's kv_cache_usage_perc: the fraction of blocks referenced by requests.
func (m *Manager) Usage() float64 { return 1 - float64(m.free)/float64(len(m.blocks)) }

// CachedPrefixBlocks returns how many leading blocks of hashes are in the cache.
func (m *Manager) CachedPrefixBlocks(hashes []uint64) int {
	if !m.caching {
		return 0
	}
	for i, h := range hashes {
		if !m.cached.Has(h) {
			return i
		}
	}
	return len(hashes)
}

// BlocksNeeded is how many new blocks s needs to compute numNewTokens more tokens.
func (m *Manager) BlocksNeeded(s *serving.Seq, numNewTokens int) int {
	return max(0, m.blocksFor(s.NumComputed+numNewTokens)-len(s.Blocks))
}

func (m *Manager) blocksFor(tokens int) int { return (tokens + m.blockSize - 1) / m.blockSize }

// Allocate extends s's block table so it covers numNewTokens more tokens. For a fresh
// sequence, cachedBlocks leading blocks of its prompt (as CachedPrefixBlocks found them)
// are taken from the cache and count as computed. It returns false, changing nothing,
// when the free blocks do not suffice.
func (m *Manager) Allocate(s *serving.Seq, numNewTokens int, cachedBlocks int) bool {
	covered := s.NumComputed + numNewTokens
	if cachedBlocks > 0 {
		if len(s.Blocks) != 0 || s.NumComputed != 0 {
			panic("kv: prefix blocks offered to a sequence that already has blocks")
		}
		covered += cachedBlocks * m.blockSize
	}
	need := m.blocksFor(covered) - len(s.Blocks) - cachedBlocks
	if need <= 0 && cachedBlocks == 0 {
		return true // the fast path of most decode steps
	}
	// Cached blocks nobody references sit in the free set: taking them uses free blocks.
	reclaimed := 0
	for _, h := range s.Req.BlockHashes[:cachedBlocks] {
		if b, _ := m.cached.Get(h); m.blocks[b].ref == 0 {
			reclaimed++
		}
	}
	if max(need, 0)+reclaimed > m.free {
		return false
	}
	for _, h := range s.Req.BlockHashes[:cachedBlocks] {
		b, _ := m.cached.Get(h)
		if m.blocks[b].ref == 0 {
			m.evict.Touch(b)
			m.free--
		}
		m.blocks[b].ref++
		m.blocks[b].hits++
		s.Blocks = append(s.Blocks, b)
	}
	for range need {
		b, ok := m.evict.Pop()
		if !ok {
			panic("kv: evict policy has no block though the count says it should")
		}
		m.uncache(b)
		m.blocks[b].ref = 1
		m.free--
		s.Blocks = append(s.Blocks, b)
	}
	m.cacheFullBlocks(s, covered)
	return true
}

// cacheFullBlocks registers the prompt blocks that the scheduled tokens fill, as vLLM v1
// does when it schedules them.
func (m *Manager) cacheFullBlocks(s *serving.Seq, covered int) {
	if !m.caching {
		return
	}
	full := min(covered/m.blockSize, len(s.Req.BlockHashes), len(s.Blocks))
	for i := full - 1; i >= 0; i-- {
		b := s.Blocks[i]
		if m.blocks[b].hash != noHash {
			break // this block and every one before it were cached earlier
		}
		h := s.Req.BlockHashes[i]
		m.blocks[b].hash = h
		m.blocks[b].hits = 0
		m.fills++
		m.blocks[b].filled = m.fills
		m.blocks[b].samePrev = none
		m.blocks[b].sameNext = none
		if head, dup := m.cached.PutIfAbsent(h, b); dup {
			// Chain behind the block already found for this hash.
			next := m.blocks[head].sameNext
			m.blocks[b].sameNext = next
			if next != none {
				m.blocks[next].samePrev = b
			}
			m.blocks[head].sameNext = b
			m.blocks[b].samePrev = head
			continue
		}
		m.emit(BlockStored, h)
	}
}

const none int32 = -1

// uncache drops a block's cached content before the block is reused. The hash leaves the
// cache only with the last block that holds it.
func (m *Manager) uncache(b int32) {
	h := m.blocks[b].hash
	if h == noHash {
		return
	}
	prev, next := m.blocks[b].samePrev, m.blocks[b].sameNext
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
		m.emit(BlockRemoved, h)
	}
	m.blocks[b].hash = noHash
	m.blocks[b].hits = 0
}

func (m *Manager) emit(kind EventKind, h uint64) {
	if m.events != nil {
		m.events(Event{Kind: kind, Hashes: []uint64{h}})
	}
}

// Free releases s's blocks, last block first, so that under LRU a sequence's tail is
// reclaimed before the prefix other requests are likelier to share.
func (m *Manager) Free(s *serving.Seq) {
	for i := len(s.Blocks) - 1; i >= 0; i-- {
		b := s.Blocks[i]
		m.blocks[b].ref--
		if m.blocks[b].ref > 0 {
			continue
		}
		if m.blocks[b].ref < 0 {
			panic(fmt.Sprintf("kv: block %d freed more often than referenced", b))
		}
		m.free++
		m.evict.Free(b, evict.BlockInfo{Cached: m.blocks[b].hash != noHash, Hits: m.blocks[b].hits, Filled: m.blocks[b].filled})
	}
	s.Blocks = s.Blocks[:0]
}
