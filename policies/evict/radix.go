package evict

import (
	"fmt"

	"servelab/policies"
)

// RadixLRU evicts as SGLang's RadixCache does (python/sglang/srt/mem_cache/radix_cache.py,
// evict): only leaves of the prefix tree, least recently used first, and a parent becomes
// a leaf once its last child is evicted. With chained block hashes the tree is implicit:
// a cached block's parent is the block that held the prompt block before it
// (BlockInfo.Parent), and a block is a leaf while no cached block names it as parent. So
// a shared prefix is never evicted before the blocks that extend it.
//
// Last access is the order of frees: a block is accessed while a sequence references it,
// and the manager frees a sequence's blocks tail first, so a parent is always accessed no
// earlier than its children. Uncached free blocks hold nothing and are reused first, in
// free order. Should every free cached block have a cached child that is in use (a child
// recorded under another block holding the same hash), the least recently used of them
// goes, as SGLang's evict would rather free less than fail an allocation here cannot.
//
// A block learns its parent at its first Free after it was filled and keeps it until Pop
// hands it out; parents are counted by generation, so a child whose parent was reused
// (evicted) no longer counts against the parent's new content.
type RadixLRU struct {
	uncached queues
	leaves   keyHeap // free cached blocks without cached children, by last access
	inner    keyHeap // free cached blocks with cached children, by last access
	nodes    []radixNode
	clock    uint64
}

type radixNode struct {
	access     uint64 // the clock at the block's last Free
	parent     int32  // none when the block has no recorded parent
	parentGen  uint32 // the parent's gen when this block recorded it
	gen        uint32 // bumped whenever the block's content is dropped
	children   int32  // cached blocks recording this block (at this gen) as parent
	registered bool   // the block holds cached content the policy knows of
}

// Reset makes every block an uncached free block, reused in index order.
func (p *RadixLRU) Reset(numBlocks int) {
	p.uncached.reset(numBlocks, 1)
	p.leaves.reset(numBlocks)
	p.inner.reset(numBlocks)
	if cap(p.nodes) < numBlocks {
		p.nodes = make([]radixNode, numBlocks)
	}
	p.nodes = p.nodes[:numBlocks]
	for i := range p.nodes {
		p.nodes[i] = radixNode{parent: none}
	}
	p.clock = 0
	for b := range int32(numBlocks) {
		p.uncached.pushBack(0, b)
	}
}

// Free adds b to the free set: a leaf or an inner node of the prefix tree, or an
// uncached block.
func (p *RadixLRU) Free(b int32, info BlockInfo) {
	if p.uncached.queued(b) || p.leaves.has(b) || p.inner.has(b) {
		panic(fmt.Sprintf("evict: block %d freed while already free", b))
	}
	p.clock++
	n := &p.nodes[b]
	n.access = p.clock
	if !info.Cached {
		p.drop(b)
		p.uncached.pushBack(0, b)
		return
	}
	if !n.registered {
		n.registered = true
		if info.HasParent && info.Parent != b && info.Parent >= 0 && int(info.Parent) < len(p.nodes) {
			n.parent, n.parentGen = info.Parent, p.nodes[info.Parent].gen
			p.addChild(info.Parent)
		}
	}
	if n.children == 0 {
		p.leaves.push(b, n.access, 0)
	} else {
		p.inner.push(b, n.access, 0)
	}
}

func (p *RadixLRU) addChild(parent int32) {
	n := &p.nodes[parent]
	n.children++
	if n.children == 1 && p.leaves.remove(parent) {
		p.inner.push(parent, n.access, 0)
	}
}

func (p *RadixLRU) removeChild(parent int32) {
	n := &p.nodes[parent]
	n.children--
	if n.children == 0 && p.inner.remove(parent) {
		p.leaves.push(parent, n.access, 0)
	}
}

// drop forgets b's cached content: its parent loses a child, and its own children stop
// counting against it.
func (p *RadixLRU) drop(b int32) {
	n := &p.nodes[b]
	if n.registered && n.parent != none && p.nodes[n.parent].gen == n.parentGen {
		p.removeChild(n.parent)
	}
	n.gen++
	n.children, n.parent, n.registered = 0, none, false
}

// Touch takes b out of the free set; a cached block keeps its place in the tree.
func (p *RadixLRU) Touch(b int32) {
	if p.uncached.unlink(b) == none && !p.leaves.remove(b) {
		p.inner.remove(b)
	}
}

// Pop takes an uncached free block if there is one, else the least recently used free
// leaf, else the least recently used free inner block.
func (p *RadixLRU) Pop() (int32, bool) {
	if b, ok := p.uncached.popFront(0); ok {
		return b, true
	}
	b, ok := p.leaves.popMin()
	if !ok {
		if b, ok = p.inner.popMin(); !ok {
			return 0, false
		}
	}
	p.drop(b)
	return b, true
}

// Len is the number of free blocks.
func (p *RadixLRU) Len() int { return p.uncached.n + p.leaves.len() + p.inner.len() }

// Spec is the policy's resolved spec; it has no parameters.
func (p *RadixLRU) Spec() policies.Spec { return policies.Spec{Name: "radix-lru"} }

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "radix-lru",
		Doc: "SGLang's RadixCache eviction: evict the least recently used leaf of the prefix tree (a cached block no cached block extends), " +
			"so a shared prefix outlives its extensions; uncached free blocks are reused first",
		New: func(*policies.Params, policies.Env) (Policy, error) { return &RadixLRU{}, nil },
	})
}
