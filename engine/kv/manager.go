// Package kv is the paged KV-cache block manager: fixed-size blocks with reference counts,
// chained block hashes for prefix caching, and eviction of cached blocks through a
// policies/evict policy. The simulator and the real engine share it.
//
// It follows vLLM v1's BlockPool and KVCacheManager: a sequence's block table grows as
// the scheduler gives it tokens; full prompt blocks enter the prefix cache when they are
// scheduled; a finished sequence's blocks are freed tail first and stay cached, free,
// until the eviction policy hands them to another allocation.
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
	// Events, if set, receives a KV event whenever hashes enter or leave the prefix cache,
	// as vLLM publishes them for KV-aware routers.
	Events func(Event)
	// Tiers, if set, are the KV cache's tiers below the accelerator, top down (CPU memory,
	// then disk): a cached block evicted from the accelerator is offloaded to the first
	// instead of dropped, and from each to the next when it evicts; a prefix found on a
	// lower tier is a hit that loads the blocks back (the caller charges the time).
	Tiers []TierConfig
	// Mover, if set, copies blocks' contents between the accelerator and the tiers as
	// their hashes move (the real engine's offloading); nil moves hashes only (the
	// simulator, which charges the time instead).
	Mover Mover
}

// Manager owns the blocks of one engine instance. It is not safe for concurrent use: an
// engine's scheduler owns it.
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
	// stored collects the hashes one allocation caches, for a single BlockStored event.
	stored []uint64
	// slab holds the hash slices of events (keep).
	slab []uint64
	// scratch holds hashes about to be looked up, for blockmap.Map.Prefetch; sink keeps
	// the prefetching reads from being optimised away.
	scratch []uint64
	sink    uint64
	// prefix holds the cached blocks Allocate is about to take (scratch).
	prefix []int32

	// tiers are the tiers below the accelerator, top down; gpuMedium is MediumGPU when
	// there are any (the medium of the accelerator's events), else empty.
	tiers     []*tier
	mover     Mover
	lower     *blockmap.Map
	gpuMedium string
	gpuHits   int64
	lastHits  []int
	// loads holds, per prefix block Allocate takes, the tier it comes from (scratch).
	loads []int8
}

type block struct {
	hash               uint64 // noHash when the block holds no cached prefix block
	filled             uint64 // fill order, for FIFO eviction
	ref                int32
	hits               uint32 // prefix-cache hits since the block was filled
	samePrev, sameNext int32  // other blocks holding the same hash, or none
}

// noHash marks a block without cached content; a real chained hash is 0 with negligible
// probability.
const noHash = 0

// none marks the end of a chain of blocks with equal hashes.
const none int32 = -1

// New builds a manager with every block free.
func New(cfg Config) (*Manager, error) {
	if cfg.NumBlocks <= 0 {
		return nil, fmt.Errorf("kv: number of blocks must be positive, got %d", cfg.NumBlocks)
	}
	if cfg.NumBlocks > 1<<31-1 {
		return nil, fmt.Errorf("kv: %d blocks do not fit 32-bit block ids", cfg.NumBlocks)
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 16
	}
	if cfg.BlockSize < 0 {
		return nil, fmt.Errorf("kv: block size must be positive, got %d", cfg.BlockSize)
	}
	if cfg.Evict == nil {
		p, err := evict.Registry.Build(policies.Spec{Name: "lru"}, policies.Env{BlockSize: cfg.BlockSize})
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
	for i := range m.blocks {
		m.blocks[i].samePrev, m.blocks[i].sameNext = none, none
	}
	m.evict.Reset(cfg.NumBlocks)
	tiers, err := newTiers(cfg.Tiers, cfg.BlockSize)
	if err != nil {
		return nil, err
	}
	if len(tiers) > maxTiers {
		return nil, fmt.Errorf("kv: %d tiers is too many (at most %d)", len(tiers), maxTiers)
	}
	m.tiers = tiers
	if len(tiers) > 0 {
		m.mover = cfg.Mover
	}
	if len(tiers) > 0 {
		n := 0
		for _, t := range tiers {
			n += len(t.hashes)
		}
		m.lower = blockmap.New(n)
	}
	m.lastHits = make([]int, 1+len(tiers))
	if len(tiers) > 0 {
		m.gpuMedium = MediumGPU
	}
	return m, nil
}

// BlockSize is tokens per block.
func (m *Manager) BlockSize() int { return m.blockSize }

// NumBlocks is the total number of blocks.
func (m *Manager) NumBlocks() int { return len(m.blocks) }

// NumFree is the number of unreferenced blocks, cached or not.
func (m *Manager) NumFree() int { return m.free }

// NumCached is the number of distinct hashes in the prefix cache.
func (m *Manager) NumCached() int { return m.cached.Len() }

// Usage is vLLM's kv_cache_usage_perc: the fraction of blocks referenced by requests.
func (m *Manager) Usage() float64 { return 1 - float64(m.free)/float64(len(m.blocks)) }

// PrefixCachingEnabled reports whether the manager caches prefix blocks.
func (m *Manager) PrefixCachingEnabled() bool { return m.caching }

// BlocksNeeded is how many new blocks s needs to compute numNewTokens more tokens.
func (m *Manager) BlocksNeeded(s *serving.Seq, numNewTokens int) int {
	return max(0, m.blocksFor(s.NumComputed+numNewTokens)-len(s.Blocks))
}

func (m *Manager) blocksFor(tokens int) int { return (tokens + m.blockSize - 1) / m.blockSize }
