package evict

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/policies"
)

func build(t testing.TB, name string) Policy {
	t.Helper()
	p, err := Registry.Build(policies.Spec{Name: name}, policies.Env{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// popAll drains a policy and returns the order.
func popAll(p Policy) []int32 {
	var out []int32
	for {
		b, ok := p.Pop()
		if !ok {
			return out
		}
		out = append(out, b)
	}
}

// op is one step of an order test: free a block, touch one, or pop and expect one.
type op struct {
	kind  byte // 'f', 't' or 'p'
	block int32
	info  BlockInfo
}

func freeU(b int32) op { return op{kind: 'f', block: b} }
func freeC(b int32, hits uint32, filled uint64) op {
	return op{kind: 'f', block: b, info: BlockInfo{Cached: true, Hits: hits, Filled: filled}}
}
func touch(b int32) op { return op{kind: 't', block: b} }
func pop(b int32) op   { return op{kind: 'p', block: b} }

func TestOrder(t *testing.T) {
	tests := []struct {
		policy, name string
		blocks       int
		// allocated takes every block out of the free set first, as if all were in use.
		allocated bool
		ops       []op
		want      []int32 // the order the remaining free blocks are popped in
	}{
		{policy: "lru", name: "reset queues blocks in index order", blocks: 4, want: []int32{0, 1, 2, 3}},
		{policy: "lru", name: "free appends at the tail", blocks: 3, ops: []op{pop(0), pop(1), freeU(1), freeU(0)}, want: []int32{2, 1, 0}},
		{policy: "lru", name: "touch unlinks head, middle and tail", blocks: 5, ops: []op{touch(2), touch(0), touch(4)}, want: []int32{1, 3}},
		{policy: "lru", name: "touched block freed again goes to the tail", blocks: 3, ops: []op{touch(0), freeC(0, 1, 1)}, want: []int32{1, 2, 0}},
		{
			policy: "lru", name: "cached and uncached blocks share the queue", blocks: 4, allocated: true,
			ops:  []op{freeC(3, 9, 1), freeU(1), freeC(0, 0, 3), freeC(2, 5, 2), touch(1)},
			want: []int32{3, 0, 2},
		},
		{
			policy: "lru", name: "a chain freed tail first is reclaimed tail first", blocks: 4, allocated: true,
			ops:  []op{freeC(3, 0, 4), freeC(2, 0, 3), freeC(1, 0, 2), freeC(0, 0, 1)},
			want: []int32{3, 2, 1, 0},
		},

		{policy: "fifo", name: "reset queues blocks in index order", blocks: 4, want: []int32{0, 1, 2, 3}},
		{
			policy: "fifo", name: "uncached in free order, then cached by fill order", blocks: 5, allocated: true,
			ops:  []op{freeC(3, 9, 4), freeU(1), freeC(0, 0, 3), freeU(4), freeC(2, 5, 1)},
			want: []int32{1, 4, 2, 0, 3},
		},
		{
			policy: "fifo", name: "touch removes cached and uncached blocks", blocks: 4, allocated: true,
			ops:  []op{freeC(0, 0, 1), freeC(1, 0, 2), freeU(2), freeU(3), touch(1), touch(3)},
			want: []int32{2, 0},
		},
		{
			policy: "fifo", name: "pops interleave with frees", blocks: 3, allocated: true,
			ops:  []op{freeC(0, 0, 2), freeC(1, 0, 1), pop(1), freeU(2), pop(2), freeC(1, 0, 3)},
			want: []int32{0, 1},
		},
		{
			policy: "fifo", name: "equal fill order falls back to free order", blocks: 2, allocated: true,
			ops:  []op{freeC(1, 0, 5), freeC(0, 0, 5)},
			want: []int32{1, 0},
		},

		{policy: "lfu", name: "reset queues blocks in index order", blocks: 4, want: []int32{0, 1, 2, 3}},
		{
			policy: "lfu", name: "uncached first, then fewest hits, ties by free order", blocks: 5, allocated: true,
			ops:  []op{freeC(3, 9, 1), freeC(0, 2, 2), freeU(1), freeC(2, 2, 3), freeC(4, 0, 4)},
			want: []int32{1, 4, 0, 2, 3},
		},
		{
			policy: "lfu", name: "hit counts beyond the buckets", blocks: 5, allocated: true,
			ops:  []op{freeC(0, 1000, 1), freeC(1, 64, 2), freeC(2, 63, 3), freeC(3, 1000, 4), freeC(4, 65, 5)},
			want: []int32{2, 1, 4, 0, 3},
		},
		{
			policy: "lfu", name: "touching the last block of a hit count empties its bucket", blocks: 3, allocated: true,
			ops:  []op{freeC(0, 1, 1), freeC(1, 5, 2), touch(0), freeC(2, 3, 3)},
			want: []int32{2, 1},
		},
		{
			policy: "lfu", name: "touch removes from the heap", blocks: 3, allocated: true,
			ops:  []op{freeC(0, 100, 1), freeC(1, 200, 2), freeC(2, 100, 3), touch(0)},
			want: []int32{2, 1},
		},
		{
			policy: "lfu", name: "fill order does not matter", blocks: 2, allocated: true,
			ops:  []op{freeC(0, 1, 1), freeC(1, 0, 9)},
			want: []int32{1, 0},
		},
	}
	for _, tc := range tests {
		t.Run(tc.policy+"/"+tc.name, func(t *testing.T) {
			p := build(t, tc.policy)
			p.Reset(tc.blocks)
			if tc.allocated {
				popAll(p)
			}
			for i, o := range tc.ops {
				switch o.kind {
				case 'f':
					p.Free(o.block, o.info)
				case 't':
					p.Touch(o.block)
				case 'p':
					if b, ok := p.Pop(); !ok || b != o.block {
						t.Fatalf("op %d: Pop = %d, %v; want %d", i, b, ok, o.block)
					}
				}
			}
			if p.Len() != len(tc.want) {
				t.Errorf("Len = %d, want %d", p.Len(), len(tc.want))
			}
			if diff := cmp.Diff(tc.want, popAll(p)); diff != "" {
				t.Errorf("eviction order (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResetReusesAPolicyAtAnySize(t *testing.T) {
	for _, name := range Registry.Names() {
		t.Run(name, func(t *testing.T) {
			p := build(t, name)
			for _, n := range []int{6, 3, 9, 0} {
				p.Reset(n)
				if p.Len() != n {
					t.Fatalf("Len after Reset(%d) = %d", n, p.Len())
				}
				var want []int32
				for b := range int32(n) {
					want = append(want, b)
				}
				// Leave state behind for the next Reset to clear.
				if n > 2 {
					p.Touch(1)
					p.Free(1, BlockInfo{Cached: true, Hits: 100, Filled: 1})
					want = append(append(want[:1:1], want[2:]...), 1)
				}
				got := popAll(p)
				// This package's policies reuse uncached blocks in free order and the one
				// cached block last; any other policy must at least give back every block.
				opts := []cmp.Option{cmpopts.EquateEmpty()}
				if _, known := models[name]; !known {
					opts = append(opts, cmpopts.SortSlices(func(a, b int32) bool { return a < b }))
				}
				if diff := cmp.Diff(want, got, opts...); diff != "" {
					t.Errorf("Reset(%d): blocks (-want +got):\n%s", n, diff)
				}
				if _, ok := p.Pop(); ok {
					t.Errorf("Pop on an empty policy succeeded")
				}
				for i := range got[:n/2] {
					p.Free(got[i], BlockInfo{Cached: i%2 == 0, Hits: uint32(i), Filled: uint64(i)})
				}
			}
		})
	}
}

func TestUnknownParameterIsAnError(t *testing.T) {
	for _, name := range Registry.Names() {
		if _, err := Registry.Build(policies.Spec{Name: name, Params: map[string]string{"capacity": "3"}}, policies.Env{}); err == nil {
			t.Errorf("%s accepted an unknown parameter", name)
		}
	}
}

func TestDoubleFreePanics(t *testing.T) {
	for _, name := range Registry.Names() {
		for _, info := range []BlockInfo{{}, {Cached: true, Hits: 2}, {Cached: true, Hits: 500}, {Cached: true, Hash: 7, Parent: 1, HasParent: true}} {
			t.Run(fmt.Sprintf("%s/%+v", name, info), func(t *testing.T) {
				p := build(t, name)
				p.Reset(2)
				b, _ := p.Pop()
				p.Free(b, info)
				defer func() {
					if recover() == nil {
						t.Error("freeing a free block did not panic")
					}
				}()
				p.Free(b, BlockInfo{Cached: !info.Cached})
			})
		}
	}
}

// TestConformance drives every registered policy with random operations and checks it
// against a set of free blocks: Pop returns only free blocks, each once, and fails only
// when none is free; Touch removes; Len counts; Reset starts over.
func TestConformance(t *testing.T) {
	const n = 64
	for _, name := range Registry.Names() {
		t.Run(name, func(t *testing.T) {
			p := build(t, name)
			free := map[int32]bool{}
			reset := func() {
				p.Reset(n)
				clear(free)
				for b := range int32(n) {
					free[b] = true
				}
			}
			reset()
			rng := rand.New(rand.NewPCG(1, 2))
			var fills uint64
			for i := range 30000 {
				switch op := rng.IntN(7); {
				case i == 15000:
					reset()
				case op < 2:
					b, ok := p.Pop()
					if ok != (len(free) > 0) {
						t.Fatalf("Pop ok = %v with %d blocks free", ok, len(free))
					}
					if ok && !free[b] {
						t.Fatalf("Pop = %d, a block that is not free", b)
					}
					delete(free, b)
				case op < 5:
					b := int32(rng.IntN(n))
					if free[b] {
						continue
					}
					fills++
					// Hits reach past LFU's buckets now and then.
					hits := uint32(rng.IntN(4))
					if rng.IntN(8) == 0 {
						hits = uint32(rng.IntN(200))
					}
					p.Free(b, BlockInfo{Cached: rng.IntN(3) > 0, Hits: hits, Filled: fills})
					free[b] = true
				default:
					b := int32(rng.IntN(n))
					if !free[b] {
						continue
					}
					p.Touch(b)
					delete(free, b)
				}
				if p.Len() != len(free) {
					t.Fatalf("Len = %d, want %d", p.Len(), len(free))
				}
			}
			for _, b := range popAll(p) {
				if !free[b] {
					t.Fatalf("drained block %d that is not free (or twice)", b)
				}
				delete(free, b)
			}
			if len(free) != 0 {
				t.Errorf("%d free blocks never popped", len(free))
			}
		})
	}
}

// TestSpecIsResolved: every eviction policy reports the spec Registry.Resolve gives for it,
// and that spec builds the same policy again.
func TestSpecIsResolved(t *testing.T) {
	for _, e := range Registry.Entries() {
		t.Run(e.Name, func(t *testing.T) {
			pol, resolved, err := Registry.Resolve(policies.Spec{Name: e.Name}, policies.Env{GPUClass: "h100", BlockSize: 16})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(resolved, pol.Spec()); diff != "" {
				t.Errorf("Spec() differs from the parameters read (-read +Spec):\n%s", diff)
			}
			if len(resolved.Params) != len(e.Params) {
				t.Errorf("resolved %s lists %d parameters, %d documented", resolved, len(resolved.Params), len(e.Params))
			}
			again, err := Registry.Build(pol.Spec(), policies.Env{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(pol.Spec(), again.Spec()); diff != "" {
				t.Errorf("rebuilt spec (-first +rebuilt):\n%s", diff)
			}
		})
	}
}
