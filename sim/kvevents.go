package sim

import (
	"servelab/engine/kv"
	"servelab/internal/kvindex"
)

// The router's prefix index, as KV events build it.
//
// A real engine caches a prompt's blocks when it schedules them, collects the KV events
// (BlockStored, BlockRemoved) while it runs the step, and publishes them when the step
// ends (engine.Engine.flushEvents; vLLM publishes its KVEventBatch likewise); servelab
// router receives them over its /v1/kv_events subscription and only then adds them to
// the endpoint's prefix index (real/router followEvents). So a request routed while
// another one with the same prefix is still in its prefill step, or in the transport
// delay after it, does not see that prefix anywhere.
//
// With Config.KVEventDelay positive the simulator routes on such an index: each
// instance's events are collected while its step runs, published at the step's end, and
// applied to the router's index KVEventDelay later. With 0 the router reads each
// instance's live cache, as if events arrived the instant a block is scheduled.
//
// BLIS (github.com/inference-sim/inference-sim, sim/cluster/snapshot.go,
// CachedSnapshotProvider.RefreshCacheIfNeeded, --cache-signal-delay) models the same lag
// by copying every instance's whole prefix-cache map whenever a routing decision comes
// more than the delay after the last copy, 0 meaning live state as here. Replaying the
// events instead costs one index update per hash that enters or leaves a cache, and
// follows the real mechanism: visibility at the end of the producing step plus the
// transport delay, rather than at a refresh boundary.
type kvIndex struct {
	// pending collects the events of the step being run, published when it ends.
	pending []kv.Event
	// published are the batches on their way to the router, oldest first from head.
	published []kvBatch
	head      int
	// known is the router's index: the hashes it has been told are cached, and on which
	// media, kept as the real router keeps it (kvindex, llm-d-kv-cache's semantics).
	known *kvindex.Index
	// spare is an applied batch's slice, emptied, for the next step's events: a step's
	// events would otherwise grow a new slice from nothing.
	spare []kv.Event
	// sink keeps blockmap.Map.Prefetch's reads from being optimised away.
	sink uint64
}

type kvBatch struct {
	at     float64 // when the router applies it
	events []kv.Event
}

func newKVIndex(blocks int) *kvIndex { return &kvIndex{known: kvindex.New(blocks)} }

func (x *kvIndex) collect(ev kv.Event) {
	if x.pending == nil {
		x.pending, x.spare = x.spare, nil
	}
	x.pending = append(x.pending, ev)
}

// publish sends the events collected so far at t, when the step that produced them
// ended, to be applied delay later. Batches due by t are applied first: no request is
// routed before t any more (steps only complete up to the next arrival), so the queue
// holds no more than delay's worth of batches.
func (x *kvIndex) publish(t, delay float64) {
	x.catchUp(t)
	if len(x.pending) == 0 {
		return
	}
	if x.head > 0 && 2*x.head >= len(x.published) {
		n := copy(x.published, x.published[x.head:])
		clear(x.published[n:])
		x.published, x.head = x.published[:n], 0
	}
	x.published = append(x.published, kvBatch{at: t + delay, events: x.pending})
	x.pending = nil
}

// catchUp applies every batch that has reached the router by t.
func (x *kvIndex) catchUp(t float64) {
	for x.head < len(x.published) && x.published[x.head].at <= t {
		b := &x.published[x.head]
		// The index is far beyond the CPU's caches at scale: read the batch's slots
		// together first (blockmap.Map.Prefetch), so the updates find them in cache.
		if len(b.events) > 1 || len(b.events) == 1 && len(b.events[0].Hashes) > 1 {
			for _, ev := range b.events {
				x.sink += x.known.Prefetch(ev.Hashes)
			}
		}
		for _, ev := range b.events {
			switch ev.Kind {
			case kv.BlockStored:
				if err := x.known.Stored(ev.Medium, ev.Hashes); err != nil {
					panic(err) // the simulator's caches name at most three media
				}
			case kv.BlockRemoved:
				x.known.Removed(ev.Medium, ev.Hashes)
			case kv.AllBlocksCleared:
				x.known.Clear()
			}
		}
		if cap(b.events) > cap(x.spare) {
			clear(b.events) // drop the hash slices it points to
			x.spare = b.events[:0]
		}
		*b = kvBatch{}
		x.head++
	}
}

// CachedPrefixBlocks answers from the router's index (serving.PrefixCache).
func (x *kvIndex) CachedPrefixBlocks(hashes []uint64) int { return x.known.CachedPrefixBlocks(hashes) }

// CachedPrefixWeight answers from the router's index (serving.TieredPrefixCache).
func (x *kvIndex) CachedPrefixWeight(hashes []uint64, weight func(medium string) float64) float64 {
	return x.known.CachedPrefixWeight(hashes, weight)
}
