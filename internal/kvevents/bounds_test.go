package kvevents

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

// Hostile payloads are refused before msgpack allocates for what they declare.
func TestDecodeRefusesHostileLengths(t *testing.T) {
	f64 := []byte{0xcb, 0, 0, 0, 0, 0, 0, 0, 0}
	for _, tc := range []struct {
		name    string
		payload []byte
		want    string
	}{
		{"array of 2^32 elements", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, "container"},
		{"events array of 2^31", append(append([]byte{0x92}, f64...), 0xdd, 0x7f, 0xff, 0xff, 0xff), "container"},
		{"map of 2^32 pairs", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}, "container"},
		{"string of 4 GiB", []byte{0xdb, 0xff, 0xff, 0xff, 0xff}, "left"},
		{"bin of 4 GiB", []byte{0xc6, 0xff, 0xff, 0xff, 0xff}, "left"},
		{"ext32 of 4 GiB", []byte{0xc9, 0xff, 0xff, 0xff, 0xff, 1}, "left"},
		{"truncated length", []byte{0xdd, 0x00}, "truncated"},
		{"unused type byte", []byte{0xc1}, "no type"},
		{"nested too deep", bytes.Repeat([]byte{0x91}, 100), "deeper"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			_, err := Decode(tc.payload)
			runtime.ReadMemStats(&m1)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode = %v, want an error saying %q", err, tc.want)
			}
			if a := m1.TotalAlloc - m0.TotalAlloc; a > 1<<20 {
				t.Errorf("allocated %d bytes refusing a %d-byte payload", a, len(tc.payload))
			}
		})
	}
}

// Everything the encoder writes passes the bounds check, and Decode never panics.
func FuzzDecode(f *testing.F) {
	p, err := Encode(Batch{TS: 1.5, Events: []Event{
		{Type: AllBlocksCleared},
		{Type: BlockStored, BlockHashes: []uint64{1 << 63, 7}, ParentBlockHash: ptr(uint64(42)),
			TokenIDs: []int32{1, 2, 3, 4}, BlockSize: 2, LoraName: ptr("adapter"), Medium: ptr(MediumGPU)},
		{Type: BlockRemoved, BlockHashes: []uint64{7}, Medium: ptr("CPU")},
	}, DataParallelRank: ptr(int64(0))})
	if err != nil {
		f.Fatal(err)
	}
	if err := checkBounds(p); err != nil {
		f.Fatalf("checkBounds refuses an encoded batch: %v", err)
	}
	f.Add(p)
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, payload []byte) {
		Decode(payload) // must return, not panic or exhaust memory
	})
}
