package blockmap

import (
	"math/rand/v2"
	"testing"
)

// TestAgainstBuiltinMap drives random puts, gets and deletes, with keys crowded into few
// home slots, and compares every answer with Go's map.
func TestAgainstBuiltinMap(t *testing.T) {
	for _, spread := range []uint64{1 << 62, 64, 5} {
		m := New(4)
		ref := map[uint64]int32{}
		rng := rand.New(rand.NewPCG(spread, 1))
		for i := range 200000 {
			k := rng.Uint64N(spread) * 0x10001
			switch rng.IntN(4) {
			case 3:
				old, found := m.PutIfAbsent(k, int32(i))
				rv, rok := ref[k]
				if found != rok || (found && old != rv) {
					t.Fatalf("PutIfAbsent(%d) = %d, %v; want %d, %v", k, old, found, rv, rok)
				}
				if !rok {
					ref[k] = int32(i)
				}
			case 0:
				m.Put(k, int32(i))
				ref[k] = int32(i)
			case 1:
				_, want := ref[k]
				if got := m.Delete(k); got != want {
					t.Fatalf("Delete(%d) = %v, want %v", k, got, want)
				}
				delete(ref, k)
			default:
				v, ok := m.Get(k)
				rv, rok := ref[k]
				if ok != rok || v != rv {
					t.Fatalf("Get(%d) = %d, %v; want %d, %v", k, v, ok, rv, rok)
				}
			}
			if m.Len() != len(ref) {
				t.Fatalf("Len = %d, want %d", m.Len(), len(ref))
			}
		}
		seen := 0
		m.Range(func(k uint64, v int32) bool {
			if ref[k] != v {
				t.Fatalf("Range gave %d=%d, want %d", k, v, ref[k])
			}
			seen++
			return true
		})
		if seen != len(ref) {
			t.Errorf("Range visited %d of %d entries", seen, len(ref))
		}
	}
}

func BenchmarkChurn(b *testing.B) {
	m := New(1 << 15)
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]uint64, 1<<15)
	for i := range keys {
		keys[i] = rng.Uint64()
		m.Put(keys[i], int32(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		j := i & (len(keys) - 1)
		m.Delete(keys[j])
		keys[j] = rng.Uint64()
		m.Put(keys[j], int32(j))
		m.Get(keys[(j*7)&(len(keys)-1)])
	}
}
