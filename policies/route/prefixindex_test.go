package route

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func newIndex(t testing.TB, capacity, maxBlocks, stride int) *PrefixIndex {
	t.Helper()
	x, err := NewPrefixIndex(capacity, maxBlocks, stride)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestPrefixIndexMatch(t *testing.T) {
	a := prompt(1, 1, 6, 10)    // group 1: 6 shared blocks, then its own
	b := prompt(1, 2, 6, 8)     // shares 6 blocks with a
	c := prompt(2, 3, 0, 5)     // unrelated
	long := prompt(3, 4, 0, 20) // longer than the match limit below
	tests := []struct {
		name      string
		recorded  [][]uint64
		instance  int
		query     []uint64
		maxBlocks int
		want      int
	}{
		{"empty index", nil, 0, a, 256, 0},
		{"whole prompt", [][]uint64{a}, 0, a, 256, 10},
		{"shared prefix only", [][]uint64{a}, 0, b, 256, 6},
		{"prefix of a recorded prompt", [][]uint64{a}, 0, a[:3], 256, 3},
		{"unrelated", [][]uint64{a}, 0, c, 256, 0},
		{"other instance", [][]uint64{a}, 1, a, 256, 0},
		{"no blocks", [][]uint64{a}, 0, nil, 256, 0},
		{"capped", [][]uint64{long}, 0, long, 12, 12},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := newIndex(t, 1000, tc.maxBlocks, 1)
			for _, h := range tc.recorded {
				x.Record(0, h)
			}
			if got := x.Match(tc.instance, tc.query); got != tc.want {
				t.Errorf("Match = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestPrefixIndexStride(t *testing.T) {
	x := newIndex(t, 100, 256, 2)
	a := prompt(1, 1, 3, 7)
	if got := x.Blocks(a); got != 3 {
		t.Fatalf("Blocks of 7 engine blocks at stride 2 = %d, want 3", got)
	}
	x.Record(0, a)
	if got := x.Len(0); got != 3 {
		t.Errorf("Len after recording 3 index blocks = %d, want 3", got)
	}
	// b shares 3 engine blocks with a: one whole index block (blocks 0-1), not two.
	b := prompt(1, 2, 3, 7)
	if got := x.Match(0, b); got != 1 {
		t.Errorf("Match sharing 3 engine blocks at stride 2 = %d, want 1", got)
	}
	if got := x.Match(0, a[:6]); got != 3 {
		t.Errorf("Match of a's first 6 engine blocks = %d, want 3", got)
	}
}

func TestPrefixIndexLRUBound(t *testing.T) {
	x := newIndex(t, 10, 256, 1)
	old := prompt(1, 1, 0, 6)
	x.Record(0, old)
	x.Record(0, prompt(2, 2, 0, 4)) // 10 entries: full
	if got := x.Match(0, old); got != 6 {
		t.Fatalf("before eviction Match = %d, want 6", got)
	}
	x.Record(0, prompt(3, 3, 0, 3)) // evicts old's three least recent blocks: its tail
	if got := x.Len(0); got != 10 {
		t.Errorf("Len = %d, want the capacity 10", got)
	}
	if got := x.Match(0, old); got != 3 {
		t.Errorf("after eviction Match = %d, want 3 (the tail goes first)", got)
	}
	for i := range 50 {
		x.Record(0, prompt(uint64(10+i), uint64(i), 0, 7))
		if got := x.Len(0); got > 10 {
			t.Fatalf("Len = %d exceeds capacity 10", got)
		}
	}
	if got := x.Match(0, old); got != 0 {
		t.Errorf("long after, Match = %d, want 0", got)
	}
}

// refLRU is a plain LRU over slices: the model the index must agree with.
type refLRU struct {
	order    []uint64 // most recent first
	capacity int
}

func (r *refLRU) touch(h uint64) {
	if i := slices.Index(r.order, h); i >= 0 {
		r.order = slices.Delete(r.order, i, i+1)
	}
	r.order = slices.Insert(r.order, 0, h)
	if len(r.order) > r.capacity {
		r.order = r.order[:r.capacity]
	}
}

func (r *refLRU) leading(hashes []uint64) int {
	for i, h := range hashes {
		if !slices.Contains(r.order, h) {
			return i
		}
	}
	return len(hashes)
}

// TestPrefixIndexAgainstReference drives the index and a slice-based LRU with the same
// random prompts (shared prefixes, several instances, a capacity small enough to evict
// all the time) and checks every match and size agree: the hash table, its deletions,
// the circular list and the binary search over prefix-closed entries.
func TestPrefixIndexAgainstReference(t *testing.T) {
	const instances, capacity, maxBlocks = 3, 37, 24
	rng := rand.New(rand.NewPCG(3, 4))
	x := newIndex(t, capacity, maxBlocks, 1)
	refs := make([]refLRU, instances)
	for i := range refs {
		refs[i].capacity = capacity
	}
	for k := range 4000 {
		h := prompt(uint64(rng.IntN(8)), uint64(k), rng.IntN(20), 1+rng.IntN(30))
		for i := range instances {
			want := refs[i].leading(h[:min(len(h), maxBlocks)])
			if got := x.Match(i, h); got != want {
				t.Fatalf("request %d instance %d: Match = %d, want %d", k, i, got, want)
			}
		}
		i := rng.IntN(instances)
		x.Record(i, h)
		for b := min(len(h), maxBlocks) - 1; b >= 0; b-- {
			refs[i].touch(h[b])
		}
		if got, want := x.Len(i), len(refs[i].order); got != want {
			t.Fatalf("request %d instance %d: Len = %d, want %d", k, i, got, want)
		}
	}
	// Every block the reference holds, the index holds, in the same recency order.
	for i := range instances {
		l := &x.lrus[i]
		var got []uint64
		for n, j := 0, l.head; n < len(l.nodes); n, j = n+1, l.nodes[j].next {
			got = append(got, l.nodes[j].hash)
		}
		if diff := cmp.Diff(refs[i].order, got); diff != "" {
			t.Errorf("instance %d recency order (-want +got):\n%s", i, diff)
		}
	}
}

func TestPrefixIndexSteadyStateDoesNotAllocate(t *testing.T) {
	x := newIndex(t, 200, 256, 1)
	prompts := make([][]uint64, 64)
	for i := range prompts {
		prompts[i] = prompt(uint64(i%5), uint64(i), 10, 64)
	}
	for _, h := range prompts { // fill to capacity
		x.Record(3, h)
	}
	k := 0
	allocs := testing.AllocsPerRun(200, func() {
		h := prompts[k%len(prompts)]
		k++
		x.Match(3, h)
		x.Record(3, h)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per Match+Record at capacity, want 0", allocs)
	}
}

func TestNewPrefixIndexRejects(t *testing.T) {
	for _, tc := range []struct{ capacity, maxBlocks, stride int }{
		{0, 1, 1}, {maxLRUCapacity + 1, 1, 1}, {1, 0, 1}, {1, 1, 0},
	} {
		if _, err := NewPrefixIndex(tc.capacity, tc.maxBlocks, tc.stride); err == nil {
			t.Errorf("NewPrefixIndex(%d, %d, %d) succeeded, want an error", tc.capacity, tc.maxBlocks, tc.stride)
		}
	}
}
