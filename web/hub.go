package web

import (
	"os"
	"sync"
	"sync/atomic"
	"time"

	"servelab/experiments"
)

// hubOptions tune a hub; zero fields take defaultHubOptions'.
type hubOptions struct {
	// Interval is the push cadence: changes are coalesced and sent at most once per interval.
	Interval time.Duration
	// QueueLen bounds each client's queue of pushes not yet written; past it the oldest is
	// dropped and the client gets a fresh snapshot instead.
	QueueLen int
	// MaxSamples bounds each cell's series (see runState).
	MaxSamples int
	// WriteWait is the deadline of each write to a client.
	WriteWait time.Duration
	// PingPeriod is how often clients are pinged; one that answers no ping for two periods
	// is dropped.
	PingPeriod time.Duration
	// Poll is how often a followed events.jsonl is read for new events.
	Poll time.Duration
}

var defaultHubOptions = hubOptions{Interval: 100 * time.Millisecond, QueueLen: 32, MaxSamples: 2000,
	WriteWait: 5 * time.Second, PingPeriod: 20 * time.Second, Poll: 100 * time.Millisecond}

func (o hubOptions) withDefaults() hubOptions {
	d := defaultHubOptions
	if o.Interval > 0 {
		d.Interval = o.Interval
	}
	if o.QueueLen > 0 {
		d.QueueLen = o.QueueLen
	}
	if o.MaxSamples > 0 {
		d.MaxSamples = o.MaxSamples
	}
	if o.WriteWait > 0 {
		d.WriteWait = o.WriteWait
	}
	if o.PingPeriod > 0 {
		d.PingPeriod = o.PingPeriod
	}
	if o.Poll > 0 {
		d.Poll = o.Poll
	}
	return d
}

// hub is one run's live state and the clients watching it. Events come in through Apply
// (a run's OnEvent, or a follower tailing events.jsonl) and only update the state under a
// short lock; a ticker coalesces the changes into one update per interval, encodes it once
// and queues it for every client. Each client has its own writer goroutine and a bounded
// queue, so a slow or stuck client delays nobody else.
type hub struct {
	id    string
	opt   hubOptions
	cells []experiments.Cell

	mu    sync.Mutex
	st    *runState
	seq   uint64 // updates built so far
	dirty bool

	cmu       sync.Mutex
	clients   map[*client]struct{}
	closed    bool
	idleSince time.Time

	pushes atomic.Uint64 // updates sent out

	fmu    sync.Mutex
	follow *follower

	stop, done chan struct{}
}

func newHub(id string, cells []experiments.Cell, opt hubOptions) *hub {
	opt = opt.withDefaults()
	h := &hub{id: id, opt: opt, cells: cells, st: newRunState(cells, opt.MaxSamples),
		clients: map[*client]struct{}{}, idleSince: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go h.loop()
	return h
}

// Apply folds an event into the run's state. It never blocks on clients: it is safe as an
// experiments.Options.OnEvent.
func (h *hub) Apply(ev experiments.Event) {
	h.mu.Lock()
	if h.st.apply(ev) {
		h.dirty = true
	}
	h.mu.Unlock()
}

// fail marks a run that ended without experiment_done (it could not start) failed.
func (h *hub) fail(err error) {
	h.mu.Lock()
	if h.st.status != StatusDone && h.st.status != StatusFailed {
		h.st.status, h.st.err, h.dirty = StatusFailed, err.Error(), true
	}
	h.mu.Unlock()
}

// markInterrupted marks a followed run whose events stopped without experiment_done.
func (h *hub) markInterrupted() {
	h.mu.Lock()
	if h.st.status == StatusRunning {
		h.st.status, h.dirty = StatusInterrupted, true
	}
	h.mu.Unlock()
}

// reset forgets the state (events.jsonl was truncated) and sends every client a snapshot.
func (h *hub) reset() {
	h.mu.Lock()
	h.st, h.dirty = newRunState(h.cells, h.opt.MaxSamples), true
	h.mu.Unlock()
	h.cmu.Lock()
	for c := range h.clients {
		c.requestSnapshot()
	}
	h.cmu.Unlock()
}

func (h *hub) loop() {
	defer close(h.done)
	t := time.NewTicker(h.opt.Interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			h.publish()
		case <-h.stop:
			h.publish()
			return
		}
	}
}

// publish sends the changes since the last publish, if any, to every client.
func (h *hub) publish() {
	h.mu.Lock()
	if !h.dirty {
		h.mu.Unlock()
		return
	}
	h.dirty = false
	h.seq++
	seq := h.seq
	m := h.st.update(h.id, seq)
	h.mu.Unlock()
	data := encode(m)
	h.pushes.Add(1)
	h.cmu.Lock()
	for c := range h.clients {
		c.push(seq, data)
	}
	h.cmu.Unlock()
}

// snapshot is the whole state, encoded, and the last update it includes.
func (h *hub) snapshot() ([]byte, uint64) {
	h.mu.Lock()
	m := h.st.snapshot(h.id, h.seq)
	h.mu.Unlock()
	return encode(m), m.Seq
}

// view runs f on the state under the hub's lock.
func (h *hub) view(f func(*runState)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h.st)
}

// subscribe adds a client writing to s; its first message is a snapshot. It returns nil
// (and closes s) when the hub is closed.
func (h *hub) subscribe(s sink) *client {
	c := &client{h: h, s: s, ring: make([]queued, h.opt.QueueLen), resync: true,
		wake: make(chan struct{}, 1), quit: make(chan struct{})}
	h.cmu.Lock()
	if h.closed {
		h.cmu.Unlock()
		s.close()
		return nil
	}
	h.clients[c] = struct{}{}
	h.cmu.Unlock()
	c.signal()
	go c.writeLoop()
	return c
}

func (h *hub) unsubscribe(c *client) {
	h.cmu.Lock()
	delete(h.clients, c)
	if len(h.clients) == 0 {
		h.idleSince = time.Now()
	}
	h.cmu.Unlock()
}

// idle reports whether the hub has had no client for at least d.
func (h *hub) idle(d time.Duration) bool {
	h.cmu.Lock()
	defer h.cmu.Unlock()
	return len(h.clients) == 0 && time.Since(h.idleSince) >= d
}

func (h *hub) numClients() int {
	h.cmu.Lock()
	defer h.cmu.Unlock()
	return len(h.clients)
}

// close stops following, publishes what is pending, and disconnects every client.
func (h *hub) close() {
	h.cmu.Lock()
	if h.closed {
		h.cmu.Unlock()
		return
	}
	h.closed = true
	h.cmu.Unlock()
	h.stopFollowing()
	close(h.stop)
	<-h.done
	h.cmu.Lock()
	clients := make([]*client, 0, len(h.clients))
	for c := range h.clients {
		clients = append(clients, c)
	}
	h.cmu.Unlock()
	for _, c := range clients {
		c.close()
	}
}

// follower tails a run's events.jsonl into its hub.
type follower struct {
	tail *tail
	stop chan struct{}
	done chan struct{}
}

// startFollowing tails t (from where it stopped) into the hub until stopFollowing.
func (h *hub) startFollowing(t *tail) {
	h.fmu.Lock()
	defer h.fmu.Unlock()
	h.cmu.Lock()
	closed := h.closed
	h.cmu.Unlock()
	if h.follow != nil || closed {
		return
	}
	f := &follower{tail: t, stop: make(chan struct{}), done: make(chan struct{})}
	h.follow = f
	go func() {
		defer close(f.done)
		tick := time.NewTicker(h.opt.Poll)
		defer tick.Stop()
		for {
			if err := t.read(h.Apply); err == errTruncated {
				t.rewind()
				h.reset()
				continue
			}
			if st, err := os.Stat(t.path); err == nil && time.Since(st.ModTime()) > staleAfter {
				h.markInterrupted()
			}
			select {
			case <-tick.C:
			case <-f.stop:
				return
			}
		}
	}()
}

// stopFollowing stops the follower, if any, and returns its tail (nil without one).
func (h *hub) stopFollowing() *tail {
	h.fmu.Lock()
	f := h.follow
	h.follow = nil
	h.fmu.Unlock()
	if f == nil {
		return nil
	}
	close(f.stop)
	<-f.done
	return f.tail
}

// sink is where a client's messages go: a websocket, or a test's recorder.
type sink interface {
	// write sends one message, failing rather than blocking past the write deadline.
	write(data []byte) error
	// ping checks the connection is alive.
	ping() error
	close()
}

type queued struct {
	seq  uint64
	data []byte
}

// client is one watcher of a hub: a ring of pushes not yet written (dropping the oldest when
// full, which makes the writer send a snapshot next, since a dropped update's samples would
// be missing) and a goroutine writing them.
type client struct {
	h *hub
	s sink

	mu      sync.Mutex
	ring    []queued
	head, n int
	resync  bool

	floor uint64 // the writer skips updates up to the last snapshot's seq
	wake  chan struct{}
	quit  chan struct{}
	once  sync.Once

	drops, snapshots, written atomic.Int64
}

func (c *client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// push queues an update without blocking.
func (c *client) push(seq uint64, data []byte) {
	c.mu.Lock()
	if c.n == len(c.ring) {
		c.ring[c.head] = queued{}
		c.head = (c.head + 1) % len(c.ring)
		c.n--
		c.resync = true
		c.drops.Add(1)
	}
	c.ring[(c.head+c.n)%len(c.ring)] = queued{seq, data}
	c.n++
	c.mu.Unlock()
	c.signal()
}

// requestSnapshot makes the next message a snapshot (a client that lost track asks for one).
func (c *client) requestSnapshot() {
	c.mu.Lock()
	c.resync = true
	c.mu.Unlock()
	c.signal()
}

// next is the next message to write: a snapshot after drops, else the oldest queued update
// the last snapshot does not already hold.
func (c *client) next() ([]byte, bool) {
	c.mu.Lock()
	if c.resync {
		c.resync = false
		for c.n > 0 {
			c.ring[c.head] = queued{}
			c.head = (c.head + 1) % len(c.ring)
			c.n--
		}
		c.mu.Unlock()
		data, seq := c.h.snapshot()
		c.floor = max(c.floor, seq)
		c.snapshots.Add(1)
		return data, true
	}
	defer c.mu.Unlock()
	for c.n > 0 {
		q := c.ring[c.head]
		c.ring[c.head] = queued{}
		c.head = (c.head + 1) % len(c.ring)
		c.n--
		if q.seq > c.floor {
			return q.data, true
		}
	}
	return nil, false
}

func (c *client) writeLoop() {
	defer c.close()
	ping := time.NewTicker(c.h.opt.PingPeriod)
	defer ping.Stop()
	for {
		select {
		case <-c.quit:
			return
		case <-ping.C:
			if c.s.ping() != nil {
				return
			}
			continue
		case <-c.wake:
		}
		for {
			data, ok := c.next()
			if !ok {
				break
			}
			if c.s.write(data) != nil {
				return
			}
			c.written.Add(1)
		}
	}
}

// close disconnects the client (a blocked write fails) and removes it from the hub.
func (c *client) close() {
	c.once.Do(func() {
		close(c.quit)
		c.s.close()
		c.h.unsubscribe(c)
	})
}
