package route

import (
	"fmt"

	"servelab/internal/blockmap"
)

// Defaults of GIE's prefix-cache-scorer, which llm-d deploys: 31250 entries per server is
// its sizing for Llama-3-8B on an H100 (500K cacheable tokens / 16-token blocks), and 256
// blocks bounds how much of a long prompt is matched.
const (
	DefaultLRUCapacityPerServer   = 31250
	DefaultMaxPrefixBlocksToMatch = 256
	// maxLRUCapacity keeps node positions within int32.
	maxLRUCapacity = 1 << 30
)

// PrefixIndex is the router-side approximation of each instance's prefix cache that GIE's
// prefix-cache-scorer keeps (llm-d's "approximate" prefix routing): for every instance,
// the block hashes of the requests routed to it, bounded by an LRU of a fixed number of
// entries. It never learns of the engines' own evictions, only of its own.
//
// Instances are keyed by InstanceView.Index, which must be non-negative and identify the
// instance across calls. An index block is stride consecutive engine blocks; its key is
// the chained hash of the last of them, which covers the whole prefix up to it.
//
// Record touches a request's blocks from last to first, so a parent block is always more
// recently used than its children and the LRU evicts children first. Each instance's
// entries therefore stay closed under prefixes, and Match finds the leading run by binary
// search instead of walking every block.
type PrefixIndex struct {
	capacity  int
	maxBlocks int
	stride    int
	lrus      []blockLRU
}

// NewPrefixIndex returns an empty index keeping at most capacity entries per instance and
// matching at most maxBlocks leading index blocks of stride engine blocks each.
func NewPrefixIndex(capacity, maxBlocks, stride int) (*PrefixIndex, error) {
	switch {
	case capacity < 1 || capacity > maxLRUCapacity:
		return nil, fmt.Errorf("prefix index: capacity %d outside [1, %d]", capacity, maxLRUCapacity)
	case maxBlocks < 1:
		return nil, fmt.Errorf("prefix index: max prefix blocks %d is not positive", maxBlocks)
	case stride < 1:
		return nil, fmt.Errorf("prefix index: stride %d is not positive", stride)
	}
	return &PrefixIndex{capacity: capacity, maxBlocks: maxBlocks, stride: stride}, nil
}

// Blocks is how many index blocks of a prompt with these engine block hashes the index
// matches and records: its full index blocks, at most the maximum.
func (x *PrefixIndex) Blocks(hashes []uint64) int {
	return min(len(hashes)/x.stride, x.maxBlocks)
}

func (x *PrefixIndex) key(hashes []uint64, block int) uint64 {
	return hashes[(block+1)*x.stride-1]
}

// Match returns how many leading index blocks of the prompt the instance is believed to
// hold.
func (x *PrefixIndex) Match(instance int, hashes []uint64) int {
	n := x.Blocks(hashes)
	if n == 0 || instance < 0 || instance >= len(x.lrus) {
		return 0
	}
	l := &x.lrus[instance]
	if l.find(x.key(hashes, 0)) < 0 {
		return 0
	}
	lo, hi := 1, n // block lo-1 is held; blocks at or beyond hi are unknown
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if l.find(x.key(hashes, mid-1)) >= 0 {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// Record notes that the prompt was routed to the instance. A negative instance is ignored.
func (x *PrefixIndex) Record(instance int, hashes []uint64) {
	n := x.Blocks(hashes)
	if n == 0 || instance < 0 {
		return
	}
	for instance >= len(x.lrus) {
		x.lrus = append(x.lrus, blockLRU{head: -1})
	}
	l := &x.lrus[instance]
	for b := n - 1; b >= 0; b-- {
		l.touch(x.key(hashes, b), x.capacity)
	}
}

// Len returns how many entries the instance's LRU holds.
func (x *PrefixIndex) Len(instance int) int {
	if instance < 0 || instance >= len(x.lrus) {
		return 0
	}
	return len(x.lrus[instance].nodes)
}

// blockLRU is a set of block hashes with least-recently-used eviction: nodes in a circular
// doubly linked list through slice positions (head is the most recent, its prev the
// least), found through a hash map of node positions. Once the set is full a new hash
// reuses the least recent node, so steady-state updates allocate nothing.
type blockLRU struct {
	nodes []lruNode
	index blockmap.Map
	head  int32
}

type lruNode struct {
	hash       uint64
	prev, next int32
}

// find returns the node position holding h, or -1.
func (l *blockLRU) find(h uint64) int32 {
	if i, ok := l.index.Get(h); ok {
		return i
	}
	return -1
}

// touch makes h the most recently used entry, inserting it (and evicting the least recent
// entry when the set holds capacity entries) if absent.
func (l *blockLRU) touch(h uint64, capacity int) {
	if i := l.find(h); i >= 0 {
		l.moveToFront(i)
		return
	}
	if len(l.nodes) < capacity {
		i := int32(len(l.nodes))
		l.nodes = append(l.nodes, lruNode{hash: h})
		l.linkFront(i)
		l.index.Put(h, i)
		return
	}
	// The least recent node is the head's predecessor in the circular list; rewriting it
	// and stepping the head back onto it makes it the most recent without relinking.
	tail := l.nodes[l.head].prev
	l.index.Delete(l.nodes[tail].hash)
	l.nodes[tail].hash = h
	l.index.Put(h, tail)
	l.head = tail
}

func (l *blockLRU) linkFront(i int32) {
	if l.head < 0 {
		l.nodes[i].prev, l.nodes[i].next = i, i
		l.head = i
		return
	}
	tail := l.nodes[l.head].prev
	l.nodes[i].prev, l.nodes[i].next = tail, l.head
	l.nodes[tail].next = i
	l.nodes[l.head].prev = i
	l.head = i
}

func (l *blockLRU) moveToFront(i int32) {
	if i == l.head {
		return
	}
	if i == l.nodes[l.head].prev {
		l.head = i
		return
	}
	p, n := l.nodes[i].prev, l.nodes[i].next
	l.nodes[p].next = n
	l.nodes[n].prev = p
	l.linkFront(i)
}
