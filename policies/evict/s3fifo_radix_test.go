package evict

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
)

// step is one operation of a tree-aware order test.
type step struct {
	kind   byte // 'f' free, 't' touch, 'p' pop (expecting block)
	block  int32
	info   BlockInfo
	parent int32 // for 'f': -1 for none
}

func cachedUnder(b, parent int32, hash uint64, hits uint32) step {
	return step{kind: 'f', block: b, parent: parent, info: BlockInfo{Cached: true, Hash: hash, Hits: hits}}
}
func root(b int32, hash uint64) step { return cachedUnder(b, -1, hash, 0) }
func hit(b int32) step               { return step{kind: 't', block: b} }
func evicts(b int32) step            { return step{kind: 'p', block: b} }
func uncachedFree(b int32) step      { return step{kind: 'f', block: b, parent: -1} }

func runSteps(t *testing.T, p Policy, steps []step) {
	t.Helper()
	for i, s := range steps {
		switch s.kind {
		case 'f':
			info := s.info
			if s.parent >= 0 {
				info.Parent, info.HasParent = s.parent, true
			}
			p.Free(s.block, info)
		case 't':
			p.Touch(s.block)
		case 'p':
			if b, ok := p.Pop(); !ok || b != s.block {
				t.Fatalf("step %d: Pop = %d, %v; want %d", i, b, ok, s.block)
			}
		}
	}
}

func TestRadixLRUOrder(t *testing.T) {
	tests := []struct {
		name   string
		blocks int
		steps  []step
		want   []int32
	}{
		{
			name: "a parent freed before its children outlives them", blocks: 3,
			steps: []step{root(0, 10), cachedUnder(1, 0, 11, 0), cachedUnder(2, 1, 12, 0)},
			want:  []int32{2, 1, 0},
		},
		{
			name: "leaves go least recently used first; the parent once both children are gone", blocks: 4,
			steps: []step{root(0, 10), cachedUnder(1, 0, 11, 0), root(3, 30), cachedUnder(2, 0, 12, 0)},
			want:  []int32{1, 3, 2, 0},
		},
		{
			name: "uncached blocks are reused first, in free order", blocks: 4,
			steps: []step{root(0, 10), uncachedFree(3), cachedUnder(1, 0, 11, 0), uncachedFree(2)},
			want:  []int32{3, 2, 1, 0},
		},
		{
			name: "a child in use keeps its parent off the leaves until it is evicted", blocks: 3,
			steps: []step{
				cachedUnder(1, 0, 11, 0), root(0, 10), root(2, 20), hit(1),
				evicts(2), // 0 is older but has a child
				cachedUnder(1, 0, 11, 1),
			},
			want: []int32{1, 0},
		},
		{
			name: "a hit refreshes a leaf's access", blocks: 3,
			steps: []step{root(0, 10), root(1, 11), root(2, 12), hit(0), root(0, 10)},
			want:  []int32{1, 2, 0},
		},
		{
			name: "a parent evicted while its child is in use no longer counts it", blocks: 3,
			steps: []step{
				cachedUnder(1, 0, 11, 0), hit(1), root(0, 10),
				evicts(0),   // the only free block: the fallback takes an inner block
				root(0, 40), // new content in block 0, no children
				cachedUnder(1, 0, 11, 1),
				root(2, 20),
			},
			want: []int32{0, 1, 2},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := build(t, "radix-lru")
			p.Reset(tc.blocks)
			popAll(p)
			runSteps(t, p, tc.steps)
			if diff := cmp.Diff(tc.want, popAll(p)); diff != "" {
				t.Errorf("eviction order (-want +got):\n%s", diff)
			}
		})
	}
}

func TestS3FIFOOrder(t *testing.T) {
	tests := []struct {
		name   string
		blocks int
		steps  []step
		want   []int32
	}{
		{
			name: "small FIFO evicts in insertion order", blocks: 3,
			steps: []step{root(2, 12), root(0, 10), root(1, 11)},
			want:  []int32{2, 0, 1},
		},
		{
			name: "a block hit twice in the small FIFO moves to main and outlives the rest", blocks: 4,
			steps: []step{root(0, 10), hit(0), cachedUnder(0, -1, 10, 2), root(1, 11), root(2, 12), root(3, 13)},
			want:  []int32{1, 2, 3, 0},
		},
		{
			name: "one hit is below move_to_main_threshold", blocks: 3,
			steps: []step{root(0, 10), hit(0), cachedUnder(0, -1, 10, 1), root(1, 11), root(2, 12)},
			want:  []int32{0, 1, 2},
		},
		{
			name: "hits while referenced count at the next free", blocks: 3,
			steps: []step{cachedUnder(0, -1, 10, 5), root(1, 11), root(2, 12)},
			want:  []int32{1, 2, 0},
		},
		{
			name: "a hash evicted from small and filled again enters main", blocks: 3,
			steps: []step{
				root(0, 10), root(1, 11), root(2, 12),
				evicts(0), // to the ghost
				root(0, 10),
			},
			want: []int32{1, 2, 0},
		},
		{
			name: "a block in use at the small FIFO's head is skipped", blocks: 3,
			steps: []step{root(0, 10), root(1, 11), root(2, 12), hit(0), evicts(1), evicts(2)},
			want:  nil,
		},
		{
			name: "uncached blocks are reused first", blocks: 3,
			steps: []step{root(0, 10), uncachedFree(2), root(1, 11)},
			want:  []int32{2, 0, 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := build(t, "s3fifo")
			p.Reset(tc.blocks)
			popAll(p)
			runSteps(t, p, tc.steps)
			if diff := cmp.Diff(tc.want, popAll(p)); diff != "" {
				t.Errorf("eviction order (-want +got):\n%s", diff)
			}
		})
	}
}

// TestS3FIFOMainReinsertsWhileCounted: a block in the main FIFO with counter c survives c
// passes of the main FIFO, its counter decremented each time.
func TestS3FIFOMainReinsertsWhileCounted(t *testing.T) {
	p := &S3FIFO{smallRatio: 0.1, threshold: 2}
	p.Reset(4) // the ghost holds 4 - ceil(0.1 x 4) = 3 hashes; block 3 stays in use
	popAll(p)
	// Hash 10 goes through the ghost into main, then is hit twice (counter 2); 11 and 12
	// follow it into main the same way, unhit.
	for _, b := range []int32{0, 1, 2} {
		p.Free(b, BlockInfo{Cached: true, Hash: uint64(10 + b)})
	}
	popAll(p) // all three to the ghost
	for _, b := range []int32{0, 1, 2} {
		p.Free(b, BlockInfo{Cached: true, Hash: uint64(10 + b)})
		if q := p.q.links[b].queue; q != s3Main {
			t.Fatalf("block %d with a ghost hash entered queue %d, want main", b, q)
		}
	}
	p.Touch(0)
	p.Free(0, BlockInfo{Cached: true, Hash: 10, Hits: 2})
	if diff := cmp.Diff([]int32{1, 2, 0}, popAll(p)); diff != "" {
		t.Errorf("main FIFO order (-want +got):\n%s", diff)
	}
}

// TestS3FIFOScanDoesNotFlushAHotBlock: a block hit a few times survives a scan of
// one-hit wonders three times the cache's size, which LRU evicts it under.
func TestS3FIFOScanDoesNotFlushAHotBlock(t *testing.T) {
	const n, hot = 20, int32(5)
	for _, tc := range []struct {
		policy   string
		survives bool
	}{
		{"s3fifo", true},
		{"lru", false},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			p := build(t, tc.policy)
			p.Reset(n)
			popAll(p)
			hash := uint64(0)
			fill := func(b int32, hits uint32) {
				hash++
				p.Free(b, BlockInfo{Cached: true, Hash: hash, Hits: hits, Filled: hash})
			}
			for b := range int32(n) {
				fill(b, 0)
			}
			for hits := range uint32(3) {
				p.Touch(hot)
				p.Free(hot, BlockInfo{Cached: true, Hash: uint64(hot) + 1, Hits: hits + 1, Filled: uint64(hot) + 1})
			}
			survived := true
			for range 3 * n {
				b, ok := p.Pop()
				if !ok {
					t.Fatal("Pop failed with every block free")
				}
				if b == hot {
					survived = false
					break
				}
				fill(b, 0)
			}
			if survived != tc.survives {
				t.Errorf("hot block survived the scan: %v, want %v", survived, tc.survives)
			}
		})
	}
}

func TestS3FIFOParams(t *testing.T) {
	for _, tc := range []struct {
		params map[string]string
		ok     bool
	}{
		{map[string]string{"small_ratio": "0.2", "move_to_main_threshold": "1"}, true},
		{map[string]string{"small_ratio": "0"}, false},
		{map[string]string{"small_ratio": "1"}, false},
		{map[string]string{"small_ratio": "x"}, false},
		{map[string]string{"move_to_main_threshold": "4"}, false},
		{map[string]string{"move_to_main_threshold": "0"}, false},
	} {
		_, err := Registry.Build(policies.Spec{Name: "s3fifo", Params: tc.params}, policies.Env{})
		if (err == nil) != tc.ok {
			t.Errorf("%v: err = %v, want ok %v", tc.params, err, tc.ok)
		}
	}
}

// s3Model is S3-FIFO written plainly over slices, for TestS3FIFOMatchesModel.
type s3Model struct {
	uncached, small, main []int32
	freq                  map[int32]int
	inUse                 map[int32]bool
	lastHits              map[int32]uint32
	hash                  map[int32]uint64
	ghost                 []uint64 // every hash evicted from small, oldest first; 0 once hit
	ghostCap              int
	ratio                 float64
	threshold             int
}

func newS3Model(n int, ratio float64, threshold int) *s3Model {
	m := &s3Model{freq: map[int32]int{}, inUse: map[int32]bool{}, lastHits: map[int32]uint32{}, hash: map[int32]uint64{},
		ratio: ratio, threshold: threshold, ghostCap: n - int(math.Ceil(ratio*float64(n)))}
	for b := range int32(n) {
		m.uncached = append(m.uncached, b)
	}
	return m
}

func without(q []int32, b int32) ([]int32, bool) {
	if i := slices.Index(q, b); i >= 0 {
		return slices.Delete(q, i, i+1), true
	}
	return q, false
}

func (m *s3Model) inGhost(h uint64) bool {
	return h != 0 && slices.Contains(m.ghost[max(0, len(m.ghost)-m.ghostCap):], h)
}

func (m *s3Model) free(b int32, info BlockInfo) {
	queued := slices.Contains(m.small, b) || slices.Contains(m.main, b)
	if queued && info.Cached && info.Hash == m.hash[b] {
		m.inUse[b] = false
		m.freq[b] = min(3, m.freq[b]+int(info.Hits-m.lastHits[b]))
		m.lastHits[b] = info.Hits
		return
	}
	m.small, _ = without(m.small, b)
	m.main, _ = without(m.main, b)
	m.inUse[b] = false
	if !info.Cached {
		m.uncached = append(m.uncached, b)
		return
	}
	m.freq[b], m.lastHits[b], m.hash[b] = min(3, int(info.Hits)), info.Hits, info.Hash
	if m.inGhost(info.Hash) {
		for i, h := range m.ghost {
			if h == info.Hash {
				m.ghost[i] = 0
			}
		}
		m.main = append(m.main, b)
		return
	}
	m.small = append(m.small, b)
}

func (m *s3Model) touch(b int32) {
	var ok bool
	if m.uncached, ok = without(m.uncached, b); !ok {
		m.inUse[b] = true
	}
}

func (m *s3Model) size() int { return len(m.uncached) + m.countFree(m.small) + m.countFree(m.main) }

func (m *s3Model) countFree(q []int32) int {
	n := 0
	for _, b := range q {
		if !m.inUse[b] {
			n++
		}
	}
	return n
}

func (m *s3Model) pop() (int32, bool) {
	if len(m.uncached) > 0 {
		b := m.uncached[0]
		m.uncached = m.uncached[1:]
		return b, true
	}
	freeS, freeM := m.countFree(m.small), m.countFree(m.main)
	if freeS+freeM == 0 {
		return 0, false
	}
	if freeS > 0 && (len(m.small) >= int(math.Ceil(m.ratio*float64(len(m.small)+len(m.main)))) || freeM == 0) {
		for m.countFree(m.small) > 0 {
			b := m.small[0]
			m.small = m.small[1:]
			if m.inUse[b] || m.freq[b] >= m.threshold {
				m.freq[b] = 0
				m.main = append(m.main, b)
				continue
			}
			if m.hash[b] != 0 {
				m.ghost = append(m.ghost, m.hash[b])
			}
			return b, true
		}
	}
	for {
		b := m.main[0]
		m.main = m.main[1:]
		if m.inUse[b] || m.freq[b] > 0 {
			if !m.inUse[b] {
				m.freq[b]--
			}
			m.main = append(m.main, b)
			continue
		}
		return b, true
	}
}

// TestS3FIFOMatchesModel checks every eviction decision of s3fifo against s3Model under
// random frees (with hashes that come back, so the ghost admits some), hits and pops.
func TestS3FIFOMatchesModel(t *testing.T) {
	for _, params := range []map[string]string{nil, {"small_ratio": "0.3", "move_to_main_threshold": "1"}} {
		for seed := range uint64(4) {
			const n = 40
			p, err := Registry.Build(policies.Spec{Name: "s3fifo", Params: params}, policies.Env{})
			if err != nil {
				t.Fatal(err)
			}
			s := p.(*S3FIFO)
			m := newS3Model(n, s.smallRatio, int(s.threshold))
			p.Reset(n)
			content := map[int32]uint64{} // the hash a block holds until it is popped
			hits := map[int32]uint32{}
			rng := rand.New(rand.NewPCG(seed, 9))
			checkAgainstModel(t, fmt.Sprintf("%v seed %d", params, seed), p, m, n, 8000, rng, modelHooks{
				freeInfo: func(b int32) BlockInfo {
					info := BlockInfo{Cached: rng.IntN(5) > 0}
					if info.Cached {
						h, ok := content[b]
						if !ok || rng.IntN(8) == 0 {
							if nh := 1 + uint64(rng.IntN(60)); nh != h {
								h, hits[b] = nh, 0
							}
						}
						hits[b] += uint32(rng.IntN(2))
						content[b], info.Hash, info.Hits = h, h, hits[b]
					} else {
						delete(content, b)
						hits[b] = 0
					}
					return info
				},
				popped: func(b int32) { delete(content, b); hits[b] = 0 },
				touched: func(b int32) {
					if _, ok := content[b]; ok {
						hits[b]++
					}
				},
			})
		}
	}
}

// radixModel is radix-lru written as scans: a free cached block is a leaf when no
// registered block names it (at its current generation) as parent.
type radixModel struct {
	uncached   []int32
	free       map[int32]bool // free cached blocks
	registered map[int32]bool
	parent     map[int32]int32
	parentGen  map[int32]int
	gen        map[int32]int
	access     map[int32]int
	clock      int
}

func newRadixModel(n int) *radixModel {
	m := &radixModel{free: map[int32]bool{}, registered: map[int32]bool{}, parent: map[int32]int32{},
		parentGen: map[int32]int{}, gen: map[int32]int{}, access: map[int32]int{}}
	for b := range int32(n) {
		m.uncached = append(m.uncached, b)
	}
	return m
}

func (m *radixModel) drop(b int32) {
	m.gen[b]++
	delete(m.registered, b)
	delete(m.parent, b)
}

func (m *radixModel) freeBlock(b int32, info BlockInfo) {
	m.clock++
	m.access[b] = m.clock
	if !info.Cached {
		m.drop(b)
		m.uncached = append(m.uncached, b)
		return
	}
	if !m.registered[b] {
		m.registered[b] = true
		if info.HasParent && info.Parent != b {
			m.parent[b], m.parentGen[b] = info.Parent, m.gen[info.Parent]
		}
	}
	m.free[b] = true
}

func (m *radixModel) touch(b int32) {
	m.uncached, _ = without(m.uncached, b)
	delete(m.free, b)
}

func (m *radixModel) leaf(b int32) bool {
	for c := range m.registered {
		if p, ok := m.parent[c]; ok && p == b && m.parentGen[c] == m.gen[b] {
			return false
		}
	}
	return true
}

func (m *radixModel) pop() (int32, bool) {
	if len(m.uncached) > 0 {
		b := m.uncached[0]
		m.uncached = m.uncached[1:]
		return b, true
	}
	best, bestLeaf := none, false
	for b := range m.free {
		l := m.leaf(b)
		if best == none || (l && !bestLeaf) || (l == bestLeaf && m.access[b] < m.access[best]) {
			best, bestLeaf = b, l
		}
	}
	if best == none {
		return 0, false
	}
	delete(m.free, best)
	m.drop(best)
	return best, true
}

// radixRef is radixModel as a referenceModel (its free map takes the method's name).
type radixRef struct{ *radixModel }

func (r radixRef) free(b int32, info BlockInfo) { r.freeBlock(b, info) }
func (r radixRef) size() int                    { return len(r.uncached) + len(r.radixModel.free) }

// TestRadixLRUMatchesModel checks every eviction decision of radix-lru against
// radixModel under random frees (with parents, some of them stale), hits and pops.
func TestRadixLRUMatchesModel(t *testing.T) {
	for seed := range uint64(4) {
		const n = 32
		p := build(t, "radix-lru")
		m := newRadixModel(n)
		p.Reset(n)
		rng := rand.New(rand.NewPCG(seed, 5))
		checkAgainstModel(t, fmt.Sprintf("seed %d", seed), p, radixRef{m}, n, 8000, rng, modelHooks{
			freeInfo: func(int32) BlockInfo {
				info := BlockInfo{Cached: rng.IntN(5) > 0}
				if info.Cached && rng.IntN(4) > 0 {
					info.Parent, info.HasParent = int32(rng.IntN(n)), true
				}
				return info
			},
		})
	}
}
