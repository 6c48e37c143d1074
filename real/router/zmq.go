package router

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"servelab/internal/kvevents"
	"servelab/internal/kvindex"
	"servelab/serving"
)

// ZMQConfig has the router follow its endpoints' KV events over ZeroMQ, as vLLM publishes
// them (--kv-events-config) and as llm-d-kv-cache's subscriber reads them, instead of
// servelab's /v1/kv_events: the router connects a SUB socket to each endpoint's host at
// SocketPort (llm-d's podDiscoveryConfig.socketPort: one subscriber per pod) and, with
// ReplayPort, asks the engine's replay socket there for the batches it missed (those
// published before it joined, and any gap in the sequence numbers).
//
// An endpoint that carries its own addresses (URL#kv-events=...,
// ParseEndpointKVEvents) is followed at those instead, whatever SocketPort says, and
// SocketPort 0 follows only such endpoints (the others use /v1/kv_events with
// Config.KVEvents): engines that share a host, as servelab up's on 127.0.0.1, cannot
// share a port.
type ZMQConfig struct {
	SocketPort int
	ReplayPort int
	// TopicFilter is the subscription's topic prefix, llm-d's topicFilter ("" for all).
	TopicFilter string
}

// zmqAddrs is where the endpoint's KV events are read over ZeroMQ: its own addresses,
// else SocketPort (and ReplayPort) on its host; nil when they are not read over ZeroMQ.
func (r *Router) zmqAddrs(e *endpoint) *kvevents.SubscriberConfig {
	z := r.cfg.KVEventsZMQ
	var filter string
	if z != nil {
		filter = z.TopicFilter
	}
	if e.kvEvents != "" {
		return &kvevents.SubscriberConfig{Endpoint: e.kvEvents, ReplayEndpoint: e.kvReplay, TopicFilter: filter}
	}
	if z == nil || z.SocketPort == 0 {
		return nil
	}
	host, _, err := net.SplitHostPort(e.host)
	if err != nil {
		host = e.host
	}
	cfg := &kvevents.SubscriberConfig{Endpoint: "tcp://" + net.JoinHostPort(host, strconv.Itoa(z.SocketPort)), TopicFilter: filter}
	if z.ReplayPort > 0 {
		cfg.ReplayEndpoint = "tcp://" + net.JoinHostPort(host, strconv.Itoa(z.ReplayPort))
	}
	return cfg
}

// kvLoop keeps the endpoint's prefix index from its KV events, over ZeroMQ where
// zmqAddrs says, else from /v1/kv_events.
func (r *Router) kvLoop(ctx context.Context, e *endpoint) {
	if cfg := r.zmqAddrs(e); cfg != nil {
		r.zmqLoop(ctx, e, *cfg)
		return
	}
	r.eventLoop(ctx, e)
}

// zmqLoop subscribes to the endpoint's ZeroMQ KV events at cfg until ctx ends.
func (r *Router) zmqLoop(ctx context.Context, e *endpoint, cfg kvevents.SubscriberConfig) {
	st := &zmqIndex{e: e, blockSize: r.cfg.BlockSize, keys: map[uint64]uint64{}}
	for ctx.Err() == nil {
		// Each subscription starts from an empty index, rebuilt from what the engine's
		// replay socket buffers, as a /v1/kv_events subscription starts from a snapshot.
		e.mu.Lock()
		e.cached = kvindex.New(0)
		clear(st.keys)
		e.mu.Unlock()
		err := kvevents.Subscribe(ctx, cfg, func(m kvevents.Message) {
			e.eventsSubscribed()
			if err := st.apply(m); err != nil {
				e.eventsUnavailable(fmt.Sprintf("%s batch %d: %v", cfg.Endpoint, m.Seq, err))
			}
			if !m.Replayed && m.Batch.TS > 0 {
				r.kvEventLag.Observe(time.Since(time.Unix(0, int64(m.Batch.TS*1e9))).Seconds())
			}
		}, func(seq uint64, err error) {
			e.eventsUnavailable(fmt.Sprintf("%s batch %d: %v", cfg.Endpoint, seq, err))
		})
		if ctx.Err() != nil {
			return
		}
		e.eventsUnavailable(err.Error())
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// zmqIndex applies vLLM KV events to an endpoint's prefix index. It keys blocks as
// llm-d-kv-cache does (pool.go digestEvents): from a BlockStored's token_ids, chained from
// its parent's key, with the router's own block hash (serving.ChainHash over
// serving.TokenBlockKey, what the router hashes prompts with), and remembers each engine
// hash's key for BlockRemoved and for later parents. So an engine whose block hashes are
// its own (vLLM's sha256 or builtin hash, salted) feeds the index with keys that match the
// router's prompt hashes; a servelab engine's keys equal its hashes. A BlockStored without
// token ids for its blocks at the router's block size (a snapshot, a lower tier's store)
// keeps the engine's hashes, mapped through what is known.
type zmqIndex struct {
	e         *endpoint
	blockSize int
	// keys maps an engine's block hash to the router's key where they differ.
	keys map[uint64]uint64
	// warned is set once a block-size mismatch was logged.
	warned bool
}

func (z *zmqIndex) key(h uint64) uint64 {
	if k, ok := z.keys[h]; ok {
		return k
	}
	return h
}

func (z *zmqIndex) apply(m kvevents.Message) error {
	e := z.e
	if m.Missed > 0 {
		e.logf("endpoint %s: %d KV-event batches before batch %d were missed (not in the engine's replay buffer); its prefix index may be off until those blocks are stored or removed again", e.url, m.Missed, m.Seq)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cached == nil || m.Restarted {
		e.cached = kvindex.New(0)
		clear(z.keys)
	}
	for _, ev := range m.Batch.Events {
		medium := ""
		if ev.Medium != nil {
			medium = *ev.Medium
		}
		switch ev.Type {
		case kvevents.AllBlocksCleared:
			e.cached.Clear()
			clear(z.keys)
		case kvevents.BlockStored:
			if err := e.cached.Stored(medium, z.storedKeys(ev)); err != nil {
				return err
			}
		case kvevents.BlockRemoved:
			keys := make([]uint64, len(ev.BlockHashes))
			for i, h := range ev.BlockHashes {
				keys[i] = z.key(h)
			}
			e.cached.Removed(medium, keys)
			for i, h := range ev.BlockHashes {
				if !e.cached.Has(keys[i]) {
					delete(z.keys, h)
				}
			}
		}
	}
	return nil
}

// storedKeys are a BlockStored's blocks as the router keys them.
func (z *zmqIndex) storedKeys(ev kvevents.Event) []uint64 {
	bs := z.blockSize
	keys := make([]uint64, len(ev.BlockHashes))
	if len(ev.TokenIDs) != len(ev.BlockHashes)*bs || (ev.BlockSize != 0 && ev.BlockSize != bs) {
		if ev.BlockSize != 0 && ev.BlockSize != bs && !z.warned {
			z.warned = true
			z.e.logf("endpoint %s: KV events of blocks of %d tokens, the router hashes blocks of %d (--block-size); its blocks cannot match prompts", z.e.url, ev.BlockSize, bs)
		}
		for i, h := range ev.BlockHashes {
			keys[i] = z.key(h)
		}
		return keys
	}
	var parent uint64
	if ev.ParentBlockHash != nil {
		parent = z.key(*ev.ParentBlockHash)
	}
	for i, h := range ev.BlockHashes {
		parent = serving.ChainHash(parent, serving.TokenBlockKey(ev.TokenIDs[i*bs:(i+1)*bs]))
		keys[i] = parent
		if parent != h {
			z.keys[h] = parent
		}
	}
	return keys
}
