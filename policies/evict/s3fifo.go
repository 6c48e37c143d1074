package evict

import (
	"fmt"
	"math"

	"servelab/policies"
)

// S3FIFO is S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction",
// SOSP'23) over KV blocks: a small FIFO S that new content enters, a main FIFO M, a ghost
// FIFO G of the hashes recently evicted from S, and a 2-bit frequency counter per block
// (capped at 3). Content whose hash is in G enters M instead of S. Evicting from S moves a
// block hit at least move_to_main_threshold times since it entered to M (counter cleared)
// and evicts any other, remembering its hash in G; evicting from M reinserts a block with
// a non-zero counter at M's tail after decrementing it, and evicts one at zero. This
// follows libCacheSim's S3FIFO.c (cache/eviction/S3FIFO.c): its move-to-main threshold is
// 2, the paper's "freq > 1" (Algorithm 1); it evicts from M when M is over its share or
// S is empty, else from S.
//
// The adaptation to a block pool:
//   - An object is a block's cached content. It enters S (or M) when the block is first
//     freed after it was filled: only then does the policy learn of it. It leaves S and M
//     only when Pop hands the block out, which is when the manager drops its hash.
//   - Frequency counts prefix-cache hits: the growth of BlockInfo.Hits between frees
//     (hits while the block was referenced included), capped at 3.
//   - A block that is referenced (Touched since its last Free) stays in its queue, as a
//     hit object stays in its FIFO, but is never evicted: reaching the head of S it moves
//     to M (it is in use, so it was hit), reaching the head of M it is reinserted at the
//     tail without its counter decremented.
//   - Size: the paper's cache size is the number of objects the cache holds. Here that is
//     the number of cached blocks S and M hold, referenced or free, not the pool size: the
//     pool's uncached free blocks hold nothing and are reused first, in free order, before
//     any cached block is evicted; uncached blocks in use (decode blocks) are no objects.
//     S's share is ceil(small_ratio x (|S|+|M|)) and M's the rest. G holds as many hashes
//     as M could hold blocks, (1-small_ratio) x the pool's block count.
//   - A block freed without a hash (BlockInfo.Hash 0) never enters G.
type S3FIFO struct {
	q          queues // queue 0: uncached free blocks; 1: S; 2: M
	blocks     []s3Block
	nS, nM     int // blocks in S and M, referenced or free
	freeS      int // free blocks in S
	freeM      int // free blocks in M
	ghost      ghostFIFO
	smallRatio float64
	threshold  uint8
	spec       policies.Spec
}

const (
	s3Uncached int32 = 0
	s3Small    int32 = 1
	s3Main     int32 = 2
	s3MaxFreq        = 3
)

type s3Block struct {
	hash     uint64
	lastHits uint32 // BlockInfo.Hits at the last Free
	freq     uint8
	inUse    bool // in S or M, and Touched since its last Free
}

// Reset makes every block an uncached free block, reused in index order.
func (p *S3FIFO) Reset(numBlocks int) {
	p.q.reset(numBlocks, 3)
	if cap(p.blocks) < numBlocks {
		p.blocks = make([]s3Block, numBlocks)
	}
	p.blocks = p.blocks[:numBlocks]
	clear(p.blocks)
	p.nS, p.nM, p.freeS, p.freeM = 0, 0, 0, 0
	p.ghost.reset(numBlocks - int(math.Ceil(p.smallRatio*float64(numBlocks))))
	for b := range int32(numBlocks) {
		p.q.pushBack(s3Uncached, b)
	}
}

// Free adds b to the free set: an uncached block to the uncached queue, new content to S
// (or M when G remembers its hash), a block already in S or M back to the free blocks of
// its queue with its counter raised by the hits since its last Free.
func (p *S3FIFO) Free(b int32, info BlockInfo) {
	blk := &p.blocks[b]
	switch q := p.q.links[b].queue; q {
	case s3Uncached:
		panic(fmt.Sprintf("evict: block %d freed while already free", b))
	case s3Small, s3Main:
		if !blk.inUse {
			panic(fmt.Sprintf("evict: block %d freed while already free", b))
		}
		if !info.Cached || info.Hash != blk.hash {
			// The content changed without Pop handing the block out: drop the old object.
			p.unlinkObject(b)
			break
		}
		blk.inUse = false
		if info.Hits >= blk.lastHits {
			blk.freq = uint8(min(uint32(blk.freq)+info.Hits-blk.lastHits, s3MaxFreq))
		} else {
			blk.freq = uint8(min(info.Hits, s3MaxFreq))
		}
		blk.lastHits = info.Hits
		if q == s3Small {
			p.freeS++
		} else {
			p.freeM++
		}
		return
	}
	if !info.Cached {
		p.q.pushBack(s3Uncached, b)
		return
	}
	*blk = s3Block{hash: info.Hash, lastHits: info.Hits, freq: uint8(min(info.Hits, s3MaxFreq))}
	if info.Hash != 0 && p.ghost.remove(info.Hash) {
		p.q.pushBack(s3Main, b)
		p.nM++
		p.freeM++
		return
	}
	p.q.pushBack(s3Small, b)
	p.nS++
	p.freeS++
}

// unlinkObject takes a referenced block's object out of S or M.
func (p *S3FIFO) unlinkObject(b int32) {
	if p.q.unlink(b) == s3Small {
		p.nS--
	} else {
		p.nM--
	}
	p.blocks[b] = s3Block{}
}

// Touch takes b out of the free set. A cached block stays in its queue, referenced.
func (p *S3FIFO) Touch(b int32) {
	blk := &p.blocks[b]
	switch p.q.links[b].queue {
	case s3Uncached:
		p.q.unlink(b)
	case s3Small:
		if !blk.inUse {
			blk.inUse = true
			p.freeS--
		}
	case s3Main:
		if !blk.inUse {
			blk.inUse = true
			p.freeM--
		}
	}
}

// Pop takes an uncached free block if there is one, else evicts by S3-FIFO's rule.
func (p *S3FIFO) Pop() (int32, bool) {
	if b, ok := p.q.popFront(s3Uncached); ok {
		return b, true
	}
	if p.freeS+p.freeM == 0 {
		return 0, false
	}
	small := int(math.Ceil(p.smallRatio * float64(p.nS+p.nM)))
	if p.freeS > 0 && (p.nS >= small || p.freeM == 0) {
		if b, ok := p.evictSmall(); ok {
			return b, true
		}
	}
	return p.evictMain(), true
}

// evictSmall evicts the first free block at S's head with too few hits, moving the
// blocks before it to M; it fails when S runs out of free blocks first.
func (p *S3FIFO) evictSmall() (int32, bool) {
	for p.freeS > 0 {
		b := p.q.ends[s3Small].head
		blk := &p.blocks[b]
		p.q.unlink(b)
		p.nS--
		if blk.inUse || blk.freq >= p.threshold {
			if !blk.inUse {
				p.freeS--
				p.freeM++
			}
			blk.freq = 0
			p.q.pushBack(s3Main, b)
			p.nM++
			continue
		}
		p.freeS--
		if blk.hash != 0 {
			p.ghost.add(blk.hash)
		}
		*blk = s3Block{}
		return b, true
	}
	return 0, false
}

// evictMain evicts the first free block at M's head whose counter is zero, reinserting
// the ones before it (free ones with their counter decremented). M holds a free block.
func (p *S3FIFO) evictMain() int32 {
	for {
		b := p.q.ends[s3Main].head
		blk := &p.blocks[b]
		if blk.inUse || blk.freq > 0 {
			if !blk.inUse {
				blk.freq--
			}
			p.q.unlink(b)
			p.q.pushBack(s3Main, b)
			continue
		}
		p.q.unlink(b)
		p.nM--
		p.freeM--
		*blk = s3Block{}
		return b
	}
}

// Len is the number of free blocks.
func (p *S3FIFO) Len() int { return p.q.n - (p.nS - p.freeS) - (p.nM - p.freeM) }

// Spec is the policy's resolved spec.
func (p *S3FIFO) Spec() policies.Spec { return p.spec }

// ghostFIFO is a bounded FIFO of hashes with O(1) membership: a ring of (hash, insertion
// number) and a map from hash to its newest insertion, so an entry the ring overwrites
// leaves the map only if it was not inserted again since.
type ghostFIFO struct {
	ring []ghostEntry
	head int
	n    int
	seq  uint64
	in   map[uint64]uint64
}

type ghostEntry struct{ hash, seq uint64 }

func (g *ghostFIFO) reset(capacity int) {
	capacity = max(capacity, 0)
	if cap(g.ring) < capacity {
		g.ring = make([]ghostEntry, capacity)
	}
	g.ring = g.ring[:capacity]
	g.head, g.n, g.seq = 0, 0, 0
	if g.in == nil {
		g.in = make(map[uint64]uint64, capacity)
	}
	clear(g.in)
}

func (g *ghostFIFO) add(h uint64) {
	if len(g.ring) == 0 {
		return
	}
	g.seq++
	if g.n == len(g.ring) {
		old := g.ring[g.head]
		if g.in[old.hash] == old.seq {
			delete(g.in, old.hash)
		}
		g.ring[g.head] = ghostEntry{h, g.seq}
		g.head = (g.head + 1) % len(g.ring)
	} else {
		g.ring[(g.head+g.n)%len(g.ring)] = ghostEntry{h, g.seq}
		g.n++
	}
	g.in[h] = g.seq
}

// remove takes h out of the ghost and reports whether it was there.
func (g *ghostFIFO) remove(h uint64) bool {
	if _, ok := g.in[h]; !ok {
		return false
	}
	delete(g.in, h)
	return true
}

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "s3fifo",
		Doc: "S3-FIFO (SOSP'23): new cached blocks enter a small FIFO, blocks hit there move to a main FIFO with 2-bit counters (reinserted while hit), " +
			"a ghost FIFO of evicted hashes admits returning content straight to main; blocks in use are skipped; uncached free blocks are reused first",
		Params: []policies.Param{
			{Name: "small_ratio", Default: "0.1", Doc: "the small FIFO's share of the cached blocks, in (0, 1)"},
			{Name: "move_to_main_threshold", Default: "2", Doc: "hits in the small FIFO that move a block to the main FIFO (libCacheSim's default 2, the paper's freq > 1), 1 to 3"},
		},
		New: func(p *policies.Params, _ policies.Env) (Policy, error) {
			ratio := p.Float("small_ratio", 0.1)
			p.Check(ratio > 0 && ratio < 1, "small_ratio", "a number in (0, 1)")
			threshold := p.Int("move_to_main_threshold", 2)
			p.Check(threshold >= 1 && threshold <= s3MaxFreq, "move_to_main_threshold", "an integer from 1 to 3")
			return &S3FIFO{smallRatio: ratio, threshold: uint8(threshold), spec: p.Resolved()}, nil
		},
	})
}
