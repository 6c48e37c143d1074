package kvevents

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"

	"github.com/go-zeromq/zmq4"
)

// quiet keeps go-zeromq from logging on stderr a peer that connected and left before the
// handshake (a replay client that gave up, a port probe); the sockets' own errors are
// returned.
var quiet = zmq4.WithLogger(log.New(io.Discard, "", 0))

// endSeq is the sequence number that ends a replay: -1 as 8 bytes, vLLM's END_SEQ.
var endSeq = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// Publisher is vLLM's ZmqEventPublisher: each batch goes out on a PUB socket as the
// multipart message [topic, seq, payload], seq counting batches from 0 as an 8-byte
// big-endian integer, and the last BufferSteps batches stay in memory for the ROUTER
// replay socket: a client sends [empty frame, start seq (8 bytes big-endian)] (a DEALER's
// frames; a ROUTER sees them behind the client's identity) and receives [empty, seq,
// payload] for each buffered batch from start on, then [empty, -1, empty] (END_SEQ).
type Publisher struct {
	cfg    Config
	pub    zmq4.Socket
	replay zmq4.Socket
	topic  []byte

	mu     sync.Mutex
	seq    uint64 // the next batch's
	buf    []buffered
	head   int // buf's oldest entry once it is full
	closed bool

	wg     sync.WaitGroup
	cancel context.CancelFunc
}

type buffered struct {
	seq     uint64
	payload []byte
}

// NewPublisher opens cfg's sockets. The PUB socket binds or connects as
// Config.Bind says; the replay socket, with a ReplayEndpoint, binds.
func NewPublisher(cfg Config) (*Publisher, error) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{cfg: cfg, topic: []byte(cfg.Topic), cancel: cancel}
	if cfg.Bind {
		// Not WithAutomaticReconnect: go-zeromq would redial the bound address itself when
		// a subscriber leaves.
		p.pub = zmq4.NewPub(ctx, quiet)
	} else {
		p.pub = zmq4.NewPub(ctx, quiet, zmq4.WithDialerMaxRetries(-1), zmq4.WithAutomaticReconnect(true))
	}
	if cfg.HWM > 0 {
		if err := p.pub.SetOption(zmq4.OptionHWM, cfg.HWM); err != nil {
			p.Close()
			return nil, fmt.Errorf("kv events: hwm: %w", err)
		}
	}
	if cfg.Bind {
		if err := p.pub.Listen(bounded(listenAddr(cfg.Endpoint))); err != nil {
			p.Close()
			return nil, fmt.Errorf("kv events: endpoint %s: %w", cfg.Endpoint, err)
		}
	} else {
		// Connecting retries in the background until the subscriber is there.
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.pub.Dial(bounded(cfg.Endpoint))
		}()
	}
	if cfg.ReplayEndpoint != "" {
		p.replay = zmq4.NewRouter(ctx, quiet, zmq4.WithID(zmq4.SocketIdentity("servelab-kv-replay")))
		if err := p.replay.Listen(bounded(listenAddr(cfg.ReplayEndpoint))); err != nil {
			p.Close()
			return nil, fmt.Errorf("kv events: replay_endpoint %s: %w", cfg.ReplayEndpoint, err)
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serveReplays(ctx)
		}()
	}
	return p, nil
}

// Addr is the PUB socket's bound address (nil when it connects).
func (p *Publisher) Addr() net.Addr {
	if !p.cfg.Bind {
		return nil
	}
	return p.pub.Addr()
}

// ReplayAddr is the replay socket's bound address (nil without one).
func (p *Publisher) ReplayAddr() net.Addr {
	if p.replay == nil {
		return nil
	}
	return p.replay.Addr()
}

// Publish sends b with the next sequence number and keeps it for replay; it returns the
// sequence number. Batches are published in the order of the calls.
func (p *Publisher) Publish(b Batch) (uint64, error) {
	payload, err := Encode(b)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, fmt.Errorf("kv events: publisher closed")
	}
	seq := p.seq
	p.seq++
	var seqb [8]byte
	binary.BigEndian.PutUint64(seqb[:], seq)
	if len(p.buf) < p.cfg.BufferSteps {
		p.buf = append(p.buf, buffered{seq, payload})
	} else {
		p.buf[p.head] = buffered{seq, payload}
		p.head = (p.head + 1) % len(p.buf)
	}
	// A PUB socket drops what a slow subscriber cannot take (HWM); the error is for a
	// socket that failed.
	if err := p.pub.SendMulti(zmq4.NewMsgFrom(p.topic, seqb[:], payload)); err != nil {
		return seq, fmt.Errorf("kv events: publishing batch %d: %w", seq, err)
	}
	return seq, nil
}

// from returns the buffered batches with seq at least start, oldest first.
func (p *Publisher) from(start uint64) []buffered {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []buffered
	for i := range p.buf {
		b := p.buf[(p.head+i)%len(p.buf)]
		if b.seq >= start {
			out = append(out, b)
		}
	}
	return out
}

func (p *Publisher) serveReplays(ctx context.Context) {
	for ctx.Err() == nil {
		msg, err := p.replay.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		// [identity, empty, start seq], as vLLM's _service_replay wants.
		if len(msg.Frames) != 3 || len(msg.Frames[2]) != 8 {
			continue
		}
		id := msg.Frames[0]
		start := binary.BigEndian.Uint64(msg.Frames[2])
		for _, b := range p.from(start) {
			var seqb [8]byte
			binary.BigEndian.PutUint64(seqb[:], b.seq)
			if p.replay.SendMulti(zmq4.NewMsgFrom(id, nil, seqb[:], b.payload)) != nil {
				break
			}
		}
		p.replay.SendMulti(zmq4.NewMsgFrom(id, nil, endSeq, nil))
	}
}

// Close closes the sockets.
func (p *Publisher) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	err := p.pub.Close()
	if errors.Is(err, net.ErrClosed) {
		// go-zeromq closes each peer's connection again, after the peer (or the cancelled
		// context) closed it: nothing was left open.
		err = nil
	}
	if p.replay != nil {
		p.replay.Close()
	}
	p.wg.Wait()
	return err
}
