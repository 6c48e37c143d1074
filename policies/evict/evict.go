// Package evict holds KV-cache eviction policies: which free block an allocation reuses
// when the cached prefixes it holds must make room.
package evict

import "servelab/policies"

// Policy orders the free blocks of a KV block manager. A block is free when no sequence
// references it; a free block may still hold a cached prefix that a later request can hit.
// The block manager calls Free when a block's reference count drops to zero, Touch when a
// free block is hit in the cache (it leaves the free set), and Pop to take the block an
// allocation reuses (evicting its cached content, if any). A block's cached content is
// dropped only when Pop hands it out (or when the manager resets its prefix cache, which
// pops every block and frees it again uncached), so a policy may keep per-block state for
// a cached block across Touch and Free until Pop returns it. Hits on a block that is
// already referenced are not reported; they show in BlockInfo.Hits at its next Free.
//
// Blocks are identified by their index in [0, numBlocks); implementations keep per-block
// state in slices of that size, so every operation is O(1) or O(log n) without allocation.
type Policy interface {
	// Reset empties the policy for a manager of numBlocks blocks.
	Reset(numBlocks int)
	// Free adds a block to the free set.
	Free(block int32, info BlockInfo)
	// Touch removes a free block that a cache hit is about to reference again.
	Touch(block int32)
	// Pop removes and returns the free block to reuse next; ok is false when none is free.
	Pop() (block int32, ok bool)
	// Len is the number of free blocks.
	Len() int
	// Spec returns the policy's resolved spec: its name and every parameter at the value
	// it runs with, defaults included (what Registry.Resolve returns for it), so an engine
	// can report exactly the policy a simulator of it must run.
	Spec() policies.Spec
}

// Registry holds every eviction policy by name.
var Registry = policies.NewRegistry[Policy]("evict")

// BlockInfo is what a policy may know of a block being freed.
type BlockInfo struct {
	// Cached says whether the block holds a full, hashed prefix block a request can hit;
	// an uncached free block is worthless and any policy but vLLM's LRU reuses it first.
	Cached bool
	// Hits counts cache hits on the block since it was filled.
	Hits uint32
	// Filled orders blocks by when they were filled (a counter, not a time).
	Filled uint64
	// Hash is the block's chained prefix hash when Cached; 0 when unknown. S3-FIFO's
	// ghost queue remembers the hashes it evicted by it.
	Hash uint64
	// Parent is the block that held the prompt block before this one when the sequence
	// freeing it ran (this block's chained hash extends Parent's), valid when HasParent;
	// HasParent is false for a prompt's first block and for uncached blocks. radix-lru
	// evicts a block only once no cached block names it as parent.
	Parent    int32
	HasParent bool
}
