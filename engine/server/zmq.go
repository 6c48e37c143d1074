package server

import (
	"context"

	"servelab/engine"
	"servelab/engine/kv"
	"servelab/internal/kvevents"
)

// KVEventSource is what PublishKVEvents reads: *engine.Engine's subscription to its
// prefix-cache events (engine.Engine.SubscribeKVEvents).
type KVEventSource interface {
	SubscribeKVEvents(buffer int) (events <-chan engine.KVEventBatch, cancel func())
}

// PublishKVEvents publishes the engine's KV events with pub, as vLLM's engine publishes its
// KVEventBatch after each step (--kv-events-config), until ctx ends: one batch per engine
// step with events, data_parallel_rank 0, blockSize the engine's. BlockStored carries the
// parent hash and token ids of the blocks a request filled, and medium "GPU" (vLLM's
// MEDIUM_GPU) for the engine's own blocks, or the KV tier's. A subscription the engine drops
// (more than buffer batches behind) is taken up again: the new one starts with the engine's
// snapshot (AllBlocksCleared, then every cached hash, without token ids), which tells
// subscribers to start over. logf receives publishing errors.
func PublishKVEvents(ctx context.Context, src KVEventSource, pub *kvevents.Publisher, blockSize, buffer int, logf func(string, ...any)) {
	rank := int64(0)
	for ctx.Err() == nil {
		events, cancel := src.SubscribeKVEvents(buffer)
		got := false
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case b, ok := <-events:
				if !ok {
					break loop
				}
				got = true
				batch := kvevents.Batch{TS: float64(b.Time.UnixNano()) / 1e9, DataParallelRank: &rank}
				for _, ev := range b.Events {
					if e, ok := wireEvent(ev, blockSize); ok {
						batch.Events = append(batch.Events, e)
					}
				}
				if len(batch.Events) == 0 {
					continue
				}
				if _, err := pub.Publish(batch); err != nil {
					logf("KV events: %v", err)
				}
			}
		}
		cancel()
		if !got {
			// The engine stopped: a new subscription would end at once too.
			return
		}
	}
}

// wireEvent is ev as vLLM's KV event; false for a BlockStored or BlockRemoved of no hashes
// (an empty cache's snapshot), which vLLM never sends.
func wireEvent(ev kv.Event, blockSize int) (kvevents.Event, bool) {
	medium := ev.Medium
	if medium == "" {
		medium = kvevents.MediumGPU
	}
	switch ev.Kind {
	case kv.AllBlocksCleared:
		return kvevents.Event{Type: kvevents.AllBlocksCleared}, true
	case kv.BlockRemoved:
		if len(ev.Hashes) == 0 {
			return kvevents.Event{}, false
		}
		return kvevents.Event{Type: kvevents.BlockRemoved, BlockHashes: ev.Hashes, Medium: &medium}, true
	case kv.BlockStored:
		if len(ev.Hashes) == 0 {
			return kvevents.Event{}, false
		}
		out := kvevents.Event{Type: kvevents.BlockStored, BlockHashes: ev.Hashes, TokenIDs: ev.Tokens,
			BlockSize: blockSize, Medium: &medium}
		if out.TokenIDs == nil {
			out.TokenIDs = []int32{}
		}
		if ev.HasParent {
			p := ev.Parent
			out.ParentBlockHash = &p
		}
		return out, true
	}
	return kvevents.Event{}, false
}

var _ KVEventSource = (*engine.Engine)(nil)
