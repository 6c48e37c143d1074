package kvevents

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// The events' tags: vLLM's class names, which msgspec's tag=True writes.
const (
	BlockStored      = "BlockStored"
	BlockRemoved     = "BlockRemoved"
	AllBlocksCleared = "AllBlocksCleared"
)

// MediumGPU is vLLM's MEDIUM_GPU: the medium of the accelerator's own blocks.
const MediumGPU = "GPU"

// Event is one of vLLM's KV events (vllm/distributed/kv_events.py): BlockStored,
// BlockRemoved or AllBlocksCleared, as Type says.
type Event struct {
	Type string
	// BlockHashes are the blocks' hashes (BlockStored and BlockRemoved). vLLM has written
	// them as integers and, since it hashes with sha256, as bytes; a reader keeps the last 8
	// bytes big-endian, as vLLM's and llm-d-kv-cache's readers do.
	BlockHashes []uint64
	// ParentBlockHash is the hash of the block before the first (BlockStored); nil for a
	// prompt's first block or when unknown.
	ParentBlockHash *uint64
	// TokenIDs are the token ids of the stored blocks, BlockSize each (BlockStored).
	TokenIDs []int32
	// BlockSize is the engine's tokens per block (BlockStored).
	BlockSize int
	// LoraID and LoraName name the adapter the blocks belong to; nil for the base model.
	LoraID   *int64
	LoraName *string
	// Medium is where the blocks are (BlockStored) or were (BlockRemoved): "GPU", "CPU",
	// ...; nil (vLLM's None) reads as the GPU.
	Medium *string
}

// Batch is vLLM's KVEventBatch: the events of one engine step.
type Batch struct {
	// TS is the Unix time in seconds at which the batch was made.
	TS     float64
	Events []Event
	// DataParallelRank is the engine's data-parallel rank; vLLM's publisher always sets it
	// (0 without data parallelism); nil writes none, as vLLM releases before it did.
	DataParallelRank *int64
}

// Encode writes b as vLLM's msgspec encoder does with its structs declared array_like=True,
// omit_defaults=True and, for the events, tag=True: a batch is [ts, events,
// data_parallel_rank], each event an array of its tag (the class name) then its fields in
// declaration order, trailing fields at their default left out; integers in their smallest
// msgpack form and floats as float64, as msgspec writes them.
//
//	BlockStored:      [tag, block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]
//	BlockRemoved:     [tag, block_hashes, medium]
//	AllBlocksCleared: [tag]
//
// BlockStored's later fields (extra_keys, group_idx, kv_cache_spec_kind,
// kv_cache_spec_sliding_window) and BlockRemoved's group_idx default to None and so are
// left out, as msgspec leaves them out; llm-d-kv-cache's decoder reads exactly these fields.
func Encode(b Batch) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	n := 2
	if b.DataParallelRank != nil {
		n = 3
	}
	enc.EncodeArrayLen(n)
	enc.EncodeFloat64(b.TS)
	enc.EncodeArrayLen(len(b.Events))
	for i, ev := range b.Events {
		if err := encodeEvent(enc, ev); err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
	}
	if b.DataParallelRank != nil {
		enc.EncodeInt(*b.DataParallelRank)
	}
	return buf.Bytes(), nil
}

func encodeEvent(enc *msgpack.Encoder, ev Event) error {
	hashes := func() {
		enc.EncodeArrayLen(len(ev.BlockHashes))
		for _, h := range ev.BlockHashes {
			enc.EncodeUint(h)
		}
	}
	optString := func(s *string) {
		if s == nil {
			enc.EncodeNil()
		} else {
			enc.EncodeString(*s)
		}
	}
	switch ev.Type {
	case BlockStored:
		enc.EncodeArrayLen(8)
		enc.EncodeString(BlockStored)
		hashes()
		if ev.ParentBlockHash == nil {
			enc.EncodeNil()
		} else {
			enc.EncodeUint(*ev.ParentBlockHash)
		}
		enc.EncodeArrayLen(len(ev.TokenIDs))
		for _, t := range ev.TokenIDs {
			enc.EncodeInt(int64(t))
		}
		enc.EncodeInt(int64(ev.BlockSize))
		if ev.LoraID == nil {
			enc.EncodeNil()
		} else {
			enc.EncodeInt(*ev.LoraID)
		}
		optString(ev.Medium)
		optString(ev.LoraName)
	case BlockRemoved:
		enc.EncodeArrayLen(3)
		enc.EncodeString(BlockRemoved)
		hashes()
		optString(ev.Medium)
	case AllBlocksCleared:
		enc.EncodeArrayLen(1)
		enc.EncodeString(AllBlocksCleared)
	default:
		return fmt.Errorf("unknown event type %q", ev.Type)
	}
	return nil
}

// Decode reads a KVEventBatch as vLLM writes it: the array_like encoding above, with any
// number of trailing fields, or the tagged maps ({"type": tag, field: value, ...}) that vLLM
// writes since it dropped array_like (vllm-project/vllm#42892; llm-d-kv-cache reads both
// since its #661). Block hashes may be integers or bytes. Unknown event tags are an error
// naming the event.
func Decode(payload []byte) (Batch, error) {
	if err := checkBounds(payload); err != nil {
		return Batch{}, fmt.Errorf("KV event batch: %w", err)
	}
	dec := msgpack.NewDecoder(bytes.NewReader(payload))
	dec.UseLooseInterfaceDecoding(true)
	v, err := dec.DecodeInterfaceLoose()
	if err != nil {
		return Batch{}, fmt.Errorf("KV event batch: %w", err)
	}
	var ts, events, rank any
	switch x := v.(type) {
	case []any:
		if len(x) < 2 {
			return Batch{}, fmt.Errorf("KV event batch: an array of %d fields, want [ts, events, ...]", len(x))
		}
		ts, events = x[0], x[1]
		if len(x) > 2 {
			rank = x[2]
		}
	case map[string]any:
		ts, events, rank = x["ts"], x["events"], x["data_parallel_rank"]
	default:
		return Batch{}, fmt.Errorf("KV event batch: a msgpack %T, want an array or a map", v)
	}
	var b Batch
	if b.TS, err = asFloat(ts); err != nil {
		return Batch{}, fmt.Errorf("KV event batch: ts: %w", err)
	}
	if rank != nil {
		r, err := asInt(rank)
		if err != nil {
			return Batch{}, fmt.Errorf("KV event batch: data_parallel_rank: %w", err)
		}
		b.DataParallelRank = &r
	}
	list, ok := events.([]any)
	if !ok {
		return Batch{}, fmt.Errorf("KV event batch: events: a %T, want a list", events)
	}
	for i, raw := range list {
		ev, err := decodeEvent(raw)
		if err != nil {
			return Batch{}, fmt.Errorf("KV event batch: events[%d]: %w", i, err)
		}
		b.Events = append(b.Events, ev)
	}
	return b, nil
}

// eventFields are each event's fields in vLLM's declaration order, after the tag.
var eventFields = map[string][]string{
	BlockStored:      {"block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name"},
	BlockRemoved:     {"block_hashes", "medium"},
	AllBlocksCleared: {},
}

func decodeEvent(raw any) (Event, error) {
	fields := map[string]any{}
	var tag string
	switch x := raw.(type) {
	case []any:
		if len(x) == 0 {
			return Event{}, errors.New("an empty array, want [tag, fields...]")
		}
		s, ok := x[0].(string)
		if !ok {
			return Event{}, fmt.Errorf("tag: a %T, want a string", x[0])
		}
		tag = s
		names, ok := eventFields[tag]
		if !ok {
			return Event{}, fmt.Errorf("unknown event %q (want BlockStored, BlockRemoved or AllBlocksCleared)", tag)
		}
		for i, name := range names {
			if i+1 < len(x) {
				fields[name] = x[i+1]
			}
		}
	case map[string]any:
		s, ok := x["type"].(string)
		if !ok {
			return Event{}, fmt.Errorf("type: a %T, want a string", x["type"])
		}
		tag, fields = s, x
		if _, ok := eventFields[tag]; !ok {
			return Event{}, fmt.Errorf("unknown event %q (want BlockStored, BlockRemoved or AllBlocksCleared)", tag)
		}
	default:
		return Event{}, fmt.Errorf("a msgpack %T, want an array or a map", raw)
	}
	ev := Event{Type: tag}
	if tag == AllBlocksCleared {
		return ev, nil
	}
	var err error
	if ev.BlockHashes, err = asHashes(fields["block_hashes"]); err != nil {
		return Event{}, fmt.Errorf("%s block_hashes: %w", tag, err)
	}
	if m := fields["medium"]; m != nil {
		s, ok := m.(string)
		if !ok {
			return Event{}, fmt.Errorf("%s medium: a %T, want a string or nil", tag, m)
		}
		ev.Medium = &s
	}
	if tag == BlockRemoved {
		return ev, nil
	}
	if p := fields["parent_block_hash"]; p != nil {
		h, err := asHash(p)
		if err != nil {
			return Event{}, fmt.Errorf("BlockStored parent_block_hash: %w", err)
		}
		ev.ParentBlockHash = &h
	}
	if t := fields["token_ids"]; t != nil {
		list, ok := t.([]any)
		if !ok {
			return Event{}, fmt.Errorf("BlockStored token_ids: a %T, want a list", t)
		}
		ev.TokenIDs = make([]int32, len(list))
		for i, x := range list {
			n, err := asInt(x)
			if err != nil || n < 0 || n > 1<<31-1 {
				return Event{}, fmt.Errorf("BlockStored token_ids[%d]: %v, want a token id", i, x)
			}
			ev.TokenIDs[i] = int32(n)
		}
	}
	if bs := fields["block_size"]; bs != nil {
		n, err := asInt(bs)
		if err != nil {
			return Event{}, fmt.Errorf("BlockStored block_size: %w", err)
		}
		ev.BlockSize = int(n)
	}
	if l := fields["lora_id"]; l != nil {
		n, err := asInt(l)
		if err != nil {
			return Event{}, fmt.Errorf("BlockStored lora_id: %w", err)
		}
		ev.LoraID = &n
	}
	if l := fields["lora_name"]; l != nil {
		s, ok := l.(string)
		if !ok {
			return Event{}, fmt.Errorf("BlockStored lora_name: a %T, want a string or nil", l)
		}
		ev.LoraName = &s
	}
	return ev, nil
}

func asHashes(v any) ([]uint64, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("a %T, want a list", v)
	}
	out := make([]uint64, len(list))
	for i, x := range list {
		h, err := asHash(x)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		out[i] = h
	}
	return out, nil
}

// asHash reads a block hash: an integer, or bytes whose last 8 are taken big-endian (fewer
// are zero-padded on the left), as llm-d-kv-cache's getHashAsUint64 reads vLLM's sha256
// hashes.
func asHash(v any) (uint64, error) {
	switch x := v.(type) {
	case uint64:
		return x, nil
	case int64:
		return uint64(x), nil
	case string:
		// Loose decoding reads msgpack bin (vLLM's bytes hashes) as a string.
		return asHash([]byte(x))
	case []byte:
		if len(x) == 0 {
			return 0, errors.New("empty bytes")
		}
		var b [8]byte
		if len(x) >= 8 {
			copy(b[:], x[len(x)-8:])
		} else {
			copy(b[8-len(x):], x)
		}
		return binary.BigEndian.Uint64(b[:]), nil
	}
	return 0, fmt.Errorf("a %T, want an integer or bytes", v)
}

func asInt(v any) (int64, error) {
	switch x := v.(type) {
	case int64:
		return x, nil
	case uint64:
		if x > 1<<63-1 {
			return 0, fmt.Errorf("%d is out of range", x)
		}
		return int64(x), nil
	}
	return 0, fmt.Errorf("a %T, want an integer", v)
}

func asFloat(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		return x, nil
	case float32:
		return float64(x), nil
	case int64:
		return float64(x), nil
	case uint64:
		return float64(x), nil
	}
	return 0, fmt.Errorf("a %T, want a number", v)
}
