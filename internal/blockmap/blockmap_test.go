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

func TestPrefetchChangesNothing(t *testing.T) {
	var empty Map
	if got := empty.Prefetch([]uint64{1, 2}); got != 0 {
		t.Errorf("Prefetch on the zero Map = %d, want 0", got)
	}
	m := New(8)
	for k := range uint64(20) {
		m.Put(k*7919+1, int32(k))
	}
	m.Prefetch([]uint64{1, 7920, 99, 0})
	if m.Len() != 20 {
		t.Fatalf("Len = %d after Prefetch, want 20", m.Len())
	}
	for k := range uint64(20) {
		if v, ok := m.Get(k*7919 + 1); !ok || v != int32(k) {
			t.Errorf("Get(%d) = %d, %v after Prefetch, want %d, true", k*7919+1, v, ok, k)
		}
	}
}
