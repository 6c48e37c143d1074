package kv

import (
	"testing"

	"servelab/serving"
)

// A holder sharing a finished sequence's blocks keeps them allocated: the evictor never
// hands them out, and they come free with the holder.
func TestShareHoldsBlocksPastTheirSequence(t *testing.T) {
	p := track(t, buildPolicy(t, "lru"))
	m := newManager(t, p, 8, nil)
	a := prompt(1, 1, 0, 16) // 4 blocks
	mustAdmit(t, m, a)
	held := append([]int32(nil), a.Blocks[:3]...)
	h := &serving.Seq{Req: &serving.Request{}}
	m.Share(h, held)
	m.Free(a)
	if got, want := m.NumFree(), 8-3; got != want {
		t.Fatalf("%d blocks free with 3 held, want %d", got, want)
	}
	// Fill every free block: none of the held ones may be handed out.
	b := prompt(2, 2, 0, 20)
	mustAdmit(t, m, b)
	for _, x := range b.Blocks {
		for _, y := range held {
			if x == y {
				t.Fatalf("held block %d reused by another sequence", x)
			}
		}
	}
	m.Free(b)
	m.Free(h)
	if m.NumFree() != 8 {
		t.Fatalf("%d of 8 blocks free after the holder left", m.NumFree())
	}
}

func TestShareRefusesUnreferencedBlocks(t *testing.T) {
	m := newManager(t, buildPolicy(t, "lru"), 4, nil)
	defer func() {
		if recover() == nil {
			t.Fatal("Share of a free block did not panic")
		}
	}()
	m.Share(&serving.Seq{Req: &serving.Request{}}, []int32{0})
}
