package kvevents

import (
	"bytes"
	"encoding/hex"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vmihailenco/msgpack/v5"
)

func ptr[T any](v T) *T { return &v }

// generic decodes a msgpack payload into plain values: arrays as []any, maps as
// map[string]any, every integer as int64 or (above MaxInt64) uint64.
func generic(t *testing.T, payload []byte) any {
	t.Helper()
	dec := msgpack.NewDecoder(bytes.NewReader(payload))
	dec.UseLooseInterfaceDecoding(true)
	v, err := dec.DecodeInterfaceLoose()
	if err != nil {
		t.Fatal(err)
	}
	return ints(v)
}

// ints makes every integer an int64, or a uint64 above MaxInt64: msgpack's uint and int
// families are one integer type to Python, and msgspec picks the smallest encoding.
func ints(v any) any {
	switch x := v.(type) {
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x)
		}
	case []any:
		for i := range x {
			x[i] = ints(x[i])
		}
	}
	return v
}

// TestEncodeIsVLLMsSchema decodes an encoded batch field by field against the structure
// vLLM's msgspec structs give it, written out here from their class definitions in
// vllm/distributed/kv_events.py (vllm-project/vllm at commit 0181ea3173e5, and b4e69e0af33f
// for the array_like declaration that vLLM releases before vllm-project/vllm#42892 carry
// and that llm-d-kv-cache's decoder reads):
//
//	class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
//	    ts: float
//	    events: list[Any]
//	    data_parallel_rank: int | None = None
//	class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True)
//	class BlockStored(KVCacheEvent):
//	    block_hashes: list[ExternalBlockHash]; parent_block_hash: ExternalBlockHash | None
//	    token_ids: list[int]; block_size: int; lora_id: int | None; medium: str | None
//	    lora_name: str | None; extra_keys: ... = None; group_idx: int | None = None
//	    kv_cache_spec_kind: str | None = None; kv_cache_spec_sliding_window: int | None = None
//	class BlockRemoved(KVCacheEvent):
//	    block_hashes: list[ExternalBlockHash]; medium: str | None; group_idx: int | None = None
//	class AllBlocksCleared(KVCacheEvent): pass
//
// tag=True makes the class name the first element of each event's array; omit_defaults
// drops trailing fields at their default (None), so extra_keys and later are absent.
func TestEncodeIsVLLMsSchema(t *testing.T) {
	const big = uint64(15760518052499183552) // above MaxInt64, as vLLM's hashes often are
	b := Batch{
		TS: 1789095808.8378847,
		Events: []Event{
			{Type: AllBlocksCleared},
			{Type: BlockStored, BlockHashes: []uint64{big, 7}, ParentBlockHash: ptr(uint64(42)),
				TokenIDs: []int32{1, 2, 3, 4, 300, 70000, 7, 8}, BlockSize: 4, Medium: ptr(MediumGPU)},
			{Type: BlockStored, BlockHashes: []uint64{9}, TokenIDs: []int32{5, 6, 7, 8}, BlockSize: 4,
				LoraID: ptr(int64(3)), LoraName: ptr("adapter"), Medium: ptr("CPU")},
			{Type: BlockRemoved, BlockHashes: []uint64{7}, Medium: ptr(MediumGPU)},
			{Type: BlockRemoved, BlockHashes: []uint64{}},
		},
		DataParallelRank: ptr(int64(0)),
	}
	payload, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []any{
		1789095808.8378847, // ts
		[]any{ // events
			[]any{"AllBlocksCleared"},
			[]any{"BlockStored",
				[]any{big, int64(7)}, // block_hashes
				int64(42),            // parent_block_hash
				[]any{int64(1), int64(2), int64(3), int64(4), int64(300), int64(70000), int64(7), int64(8)}, // token_ids
				int64(4), // block_size
				nil,      // lora_id
				"GPU",    // medium
				nil,      // lora_name
			},
			[]any{"BlockStored", []any{int64(9)}, nil, []any{int64(5), int64(6), int64(7), int64(8)}, int64(4), int64(3), "CPU", "adapter"},
			[]any{"BlockRemoved", []any{int64(7)}, "GPU"}, // block_hashes, medium
			[]any{"BlockRemoved", []any{}, nil},
		},
		int64(0), // data_parallel_rank
	}
	if diff := cmp.Diff(want, generic(t, payload)); diff != "" {
		t.Errorf("encoded batch differs from vLLM's schema (-vLLM +ours):\n%s", diff)
	}
	got, err := Decode(payload)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(b, got); diff != "" {
		t.Errorf("Decode(Encode(b)) differs (-want +got):\n%s", diff)
	}
}

// TestEncodeBytes pins the exact bytes msgspec writes for a small batch: a fixarray of 3,
// float64 ts, the events, and integers in their smallest form (msgspec's rules).
func TestEncodeBytes(t *testing.T) {
	payload, err := Encode(Batch{TS: 1.5, Events: []Event{
		{Type: AllBlocksCleared},
		{Type: BlockRemoved, BlockHashes: []uint64{1, 200, 70000, math.MaxUint64}, Medium: ptr("GPU")},
	}, DataParallelRank: ptr(int64(0))})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"93",                 // [ts, events, data_parallel_rank]
		"cb3ff8000000000000", // 1.5 as float64
		"92",                 // two events
		"91" + "b0" + hex.EncodeToString([]byte("AllBlocksCleared")),
		"93" + "ac" + hex.EncodeToString([]byte("BlockRemoved")),
		"94" + "01" + "ccc8" + "ce00011170" + "cfffffffffffffffff", // 1, 200 (uint8), 70000 (uint32), 2^64-1 (uint64)
		"a3" + hex.EncodeToString([]byte("GPU")),
		"00", // data_parallel_rank 0
	}, "")
	if got := hex.EncodeToString(payload); got != want {
		t.Errorf("payload\n got %s\nwant %s", got, want)
	}
}

// TestDecodeVLLMEncodings reads what other vLLM versions write: a batch of two fields
// (before data_parallel_rank), tagged maps (since array_like was dropped), hashes as bytes
// (sha256; the last 8 bytes big-endian, as llm-d reads them) and events with more trailing
// fields than ours.
func TestDecodeVLLMEncodings(t *testing.T) {
	hash32 := make([]byte, 32)
	for i := range hash32 {
		hash32[i] = byte(i)
	}
	tests := []struct {
		name string
		v    any
		want Batch
	}{
		{"two-field batch, old BlockStored", []any{2.0, []any{[]any{"BlockStored", []any{5}, nil, []any{1, 2}, 2, nil}}},
			Batch{TS: 2, Events: []Event{{Type: BlockStored, BlockHashes: []uint64{5}, TokenIDs: []int32{1, 2}, BlockSize: 2}}}},
		{"maps", map[string]any{"ts": 3.0, "data_parallel_rank": 1, "events": []any{
			map[string]any{"type": "BlockStored", "block_hashes": []any{hash32}, "parent_block_hash": []byte{1, 2},
				"token_ids": []any{9}, "block_size": 1, "lora_id": nil, "medium": "GPU", "lora_name": nil,
				"extra_keys": []any{nil}, "group_idx": 0, "kv_cache_spec_kind": "full_attention"},
			map[string]any{"type": "BlockRemoved", "block_hashes": []any{7}, "medium": nil, "group_idx": 0},
			map[string]any{"type": "AllBlocksCleared"},
		}}, Batch{TS: 3, DataParallelRank: ptr(int64(1)), Events: []Event{
			{Type: BlockStored, BlockHashes: []uint64{0x18191a1b1c1d1e1f}, ParentBlockHash: ptr(uint64(0x0102)),
				TokenIDs: []int32{9}, BlockSize: 1, Medium: ptr("GPU")},
			{Type: BlockRemoved, BlockHashes: []uint64{7}},
			{Type: AllBlocksCleared},
		}}},
		{"newer array fields", []any{4.0, []any{[]any{"BlockStored", []any{1}, nil, []any{3}, 1, nil, "GPU", nil, []any{nil}, 0, "full_attention"}}, 0},
			Batch{TS: 4, DataParallelRank: ptr(int64(0)), Events: []Event{{Type: BlockStored, BlockHashes: []uint64{1}, TokenIDs: []int32{3}, BlockSize: 1, Medium: ptr("GPU")}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			payload, err := msgpack.Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(payload)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{[]any{1.0}, "an array of 1 fields"},
		{[]any{1.0, []any{[]any{"BlockMoved"}}}, `events[0]: unknown event "BlockMoved"`},
		{[]any{1.0, []any{[]any{"BlockStored", []any{1.5}}}}, "events[0]: BlockStored block_hashes: [0]: a float64"},
		{[]any{1.0, []any{[]any{"BlockStored", []any{1}, nil, []any{-1}}}}, "token_ids[0]: -1"},
		{"x", "a msgpack string"},
	}
	for _, tc := range tests {
		payload, _ := msgpack.Marshal(tc.v)
		if _, err := Decode(payload); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%v) = %v, want an error with %q", tc.v, err, tc.want)
		}
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		in      string
		want    Config
		wantErr string
	}{
		{`{"enable_kv_cache_events": true}`, Config{EnableKVCacheEvents: true, Publisher: "zmq", Endpoint: DefaultEndpoint, Bind: true, BufferSteps: 10000, HWM: 100000, MaxQueueSize: 100000}, ""},
		{`{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "topic": "kv@a@m", "buffer_steps": 5, "hwm": 7}`,
			Config{EnableKVCacheEvents: true, Publisher: "zmq", Endpoint: "tcp://*:5557", Bind: true, ReplayEndpoint: "tcp://*:5558", Topic: "kv@a@m", BufferSteps: 5, HWM: 7, MaxQueueSize: 100000}, ""},
		{`{"enable_kv_cache_events": true, "endpoint": "tcp://indexer:5557"}`, Config{EnableKVCacheEvents: true, Publisher: "zmq", Endpoint: "tcp://indexer:5557", BufferSteps: 10000, HWM: 100000, MaxQueueSize: 100000}, ""},
		{`{"enable_kv_cache_events": true, "endpoint": "tcp://127.0.0.1:6000", "bind": true}`, Config{EnableKVCacheEvents: true, Publisher: "zmq", Endpoint: "tcp://127.0.0.1:6000", Bind: true, BufferSteps: 10000, HWM: 100000, MaxQueueSize: 100000}, ""},
		{`{}`, Config{Publisher: "null", Endpoint: DefaultEndpoint, Bind: true, BufferSteps: 10000, HWM: 100000, MaxQueueSize: 100000}, ""},
		{`{"enable_kv_cache_event": true}`, Config{}, `unknown field "enable_kv_cache_event"`},
		{`{"publisher": "kafka"}`, Config{}, `publisher "kafka"`},
		{`{"buffer_steps": 0}`, Config{}, "buffer_steps 0"},
		{`{"endpoint": "localhost:5557"}`, Config{}, `endpoint "localhost:5557"`},
	}
	for _, tc := range tests {
		got, err := ParseConfig(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseConfig(%s) = %v, want an error with %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseConfig(%s): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseConfig(%s) (-want +got):\n%s", tc.in, diff)
		}
	}
}

// TestLLMDDecodesOurBatches decodes an encoded batch as llm-d-kv-cache's subscriber does
// (pkg/kvcache/kvevents/events.go and pool.go, llm-d/llm-d-kv-cache at 099fcdbab4e7): the
// batch into an array-encoded struct with the events left raw, each event as a tagged union
// whose tail is re-marshalled and decoded into an array-encoded struct of the tag's fields,
// hashes as uint64 or int64.
func TestLLMDDecodesOurBatches(t *testing.T) {
	type llmdBatch struct {
		_                struct{} `msgpack:",array"`
		TS               float64
		Events           []msgpack.RawMessage
		DataParallelRank *int `msgpack:",omitempty"`
	}
	type llmdStored struct {
		_               struct{} `msgpack:",array"`
		BlockHashes     []any
		ParentBlockHash any
		TokenIds        []uint32
		BlockSize       int
		LoraID          *int    `msgpack:",omitempty"`
		Medium          *string `msgpack:",omitempty"`
		LoraName        *string `msgpack:",omitempty"`
	}
	type llmdRemoved struct {
		_           struct{} `msgpack:",array"`
		BlockHashes []any
		Medium      *string `msgpack:",omitempty"`
	}
	payload, err := Encode(Batch{TS: 7, DataParallelRank: ptr(int64(0)), Events: []Event{
		{Type: AllBlocksCleared},
		{Type: BlockStored, BlockHashes: []uint64{1 << 63, 5}, ParentBlockHash: ptr(uint64(9)), TokenIDs: []int32{1, 2, 3, 4}, BlockSize: 2, Medium: ptr("GPU")},
		{Type: BlockRemoved, BlockHashes: []uint64{5}, Medium: ptr("CPU")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var b llmdBatch
	if err := msgpack.Unmarshal(payload, &b); err != nil {
		t.Fatal(err)
	}
	if b.TS != 7 || b.DataParallelRank == nil || *b.DataParallelRank != 0 || len(b.Events) != 3 {
		t.Fatalf("batch: ts %v, rank %v, %d events", b.TS, b.DataParallelRank, len(b.Events))
	}
	var got []any
	for _, raw := range b.Events {
		var union []msgpack.RawMessage
		if err := msgpack.Unmarshal(raw, &union); err != nil {
			t.Fatal(err)
		}
		var tag string
		if err := msgpack.Unmarshal(union[0], &tag); err != nil {
			t.Fatal(err)
		}
		tail, _ := msgpack.Marshal(union[1:])
		switch tag {
		case BlockStored:
			var ev llmdStored
			if err := msgpack.Unmarshal(tail, &ev); err != nil {
				t.Fatalf("BlockStored: %v", err)
			}
			got = append(got, ev)
		case BlockRemoved:
			var ev llmdRemoved
			if err := msgpack.Unmarshal(tail, &ev); err != nil {
				t.Fatalf("BlockRemoved: %v", err)
			}
			got = append(got, ev)
		default:
			got = append(got, tag)
		}
	}
	want := []any{
		AllBlocksCleared,
		llmdStored{BlockHashes: []any{uint64(1 << 63), int8(5)}, ParentBlockHash: int8(9), TokenIds: []uint32{1, 2, 3, 4}, BlockSize: 2, Medium: ptr("GPU")},
		llmdRemoved{BlockHashes: []any{int8(5)}, Medium: ptr("CPU")},
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreUnexported(llmdStored{}, llmdRemoved{})); diff != "" {
		t.Errorf("llm-d's decoding of our batch (-want +got):\n%s", diff)
	}
}

// benchBatch is a step's batch of a 2,048-token prompt at block size 16: one BlockStored of
// 128 blocks with their token ids, and a BlockRemoved of 128 evicted blocks.
func benchBatch() Batch {
	hashes := make([]uint64, 128)
	tokens := make([]int32, 128*16)
	for i := range hashes {
		hashes[i] = uint64(i) * 0x9e3779b97f4a7c15
	}
	for i := range tokens {
		tokens[i] = int32(i * 31 % 32000)
	}
	return Batch{TS: 1.5, DataParallelRank: ptr(int64(0)), Events: []Event{
		{Type: BlockStored, BlockHashes: hashes, ParentBlockHash: ptr(uint64(7)), TokenIDs: tokens, BlockSize: 16, Medium: ptr(MediumGPU)},
		{Type: BlockRemoved, BlockHashes: hashes, Medium: ptr(MediumGPU)},
	}}
}

func BenchmarkEncode(b *testing.B) {
	batch := benchBatch()
	for b.Loop() {
		if _, err := Encode(batch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	payload, _ := Encode(benchBatch())
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := Decode(payload); err != nil {
			b.Fatal(err)
		}
	}
}
