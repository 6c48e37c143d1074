package engine

import (
	"time"

	"servelab/engine/kv"
)

// KVEventBatch is a step's prefix-cache changes, published after the step as vLLM
// publishes its KVEventBatch. Seq numbers batches per subscription without gaps, so a
// subscriber can tell it missed none.
type KVEventBatch struct {
	Seq    uint64
	Time   time.Time
	Events []kv.Event
}

// subscriber receives batches until it falls behind by more than its buffer; then its
// channel is closed and it must subscribe again (starting from a fresh snapshot), because
// a prefix index that missed events would be wrong.
type subscriber struct {
	ch        chan KVEventBatch
	seq       uint64
	cancelled bool // set by cancel, under Engine.mu
	closed    bool // only the loop closes ch
}

// SubscribeKVEvents returns a channel of event batches. The first batch is a snapshot:
// AllBlocksCleared followed by one BlockStored of every cached hash (with KV tiers, one per
// tier, each naming its medium). cancel stops the
// subscription; the channel is closed when it ends, including when the engine shuts down.
func (e *Engine) SubscribeKVEvents(buffer int) (events <-chan KVEventBatch, cancel func()) {
	sub := &subscriber{ch: make(chan KVEventBatch, max(buffer, 1))}
	e.mu.Lock()
	if e.stopLoop {
		e.mu.Unlock()
		close(sub.ch)
		return sub.ch, func() {}
	}
	e.newSubs = append(e.newSubs, sub)
	e.mu.Unlock()
	e.signal()
	return sub.ch, func() {
		e.mu.Lock()
		sub.cancelled = true
		e.mu.Unlock()
		e.signal()
	}
}

// addSubscribers sends each new subscriber its snapshot; run by the loop, which owns the
// block manager.
func (e *Engine) addSubscribers(subs []*subscriber) {
	if len(subs) == 0 {
		return
	}
	snapshot := e.inst.KV().SnapshotEvents()
	for _, s := range subs {
		e.send(s, snapshot)
	}
	e.mu.Lock()
	e.subs = append(e.subs, subs...)
	e.mu.Unlock()
}

func (e *Engine) send(s *subscriber, events []kv.Event) {
	if s.closed {
		return
	}
	s.seq++
	select {
	case s.ch <- KVEventBatch{Seq: s.seq, Time: time.Now(), Events: events}:
	default:
		s.closed = true
		close(s.ch)
	}
}

// flushEvents publishes the events collected since the last flush and drops subscribers
// that left or fell behind.
func (e *Engine) flushEvents() {
	e.mu.Lock()
	subs := e.subs[:0]
	for _, s := range e.subs {
		if s.cancelled && !s.closed {
			s.closed = true
			close(s.ch)
		}
		if !s.closed {
			subs = append(subs, s)
		}
	}
	clear(e.subs[len(subs):])
	e.subs = subs
	e.mu.Unlock()
	if len(e.events) == 0 {
		return
	}
	events := e.events
	e.events = nil
	for _, s := range subs {
		e.send(s, events)
	}
}

func (e *Engine) closeSubscribers() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range append(e.subs, e.newSubs...) {
		if !s.closed {
			s.closed = true
			close(s.ch)
		}
	}
	e.subs, e.newSubs = nil, nil
}
