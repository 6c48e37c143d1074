package kvevents

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/go-zeromq/zmq4"
)

// SubscriberConfig is where a Subscriber reads a publisher's events.
type SubscriberConfig struct {
	// Endpoint is the publisher's PUB address, connected to (tcp://HOST:PORT).
	Endpoint string
	// ReplayEndpoint, if set, is the publisher's ROUTER replay address: batches missed
	// (a sequence-number gap, or those published before the subscription began) are
	// asked for there.
	ReplayEndpoint string
	// TopicFilter is the subscription's topic prefix ("" for every topic), llm-d's
	// topicFilter.
	TopicFilter string
	// ReplayTimeout bounds one replay; 0 means 2 s.
	ReplayTimeout time.Duration
}

// Message is a batch as a Subscriber delivers it.
type Message struct {
	Topic string
	Seq   uint64
	Batch Batch
	// Missed counts the batches before this one that were neither received nor replayed:
	// an index built from the events may miss their changes.
	Missed uint64
	// Replayed is set on a batch that came from the replay socket.
	Replayed bool
	// Restarted is set when the sequence went back: the publisher started over (an engine
	// restarted), so what was known of it is stale.
	Restarted bool
}

// Subscribe connects to cfg.Endpoint and calls handle with each batch in sequence order
// until ctx ends or the connection is lost (an error). With a replay socket it first delivers what that still has from sequence
// number 0 (a subscriber that joins late would otherwise lack the publisher's earlier
// events), and fills any gap in the sequence numbers from it; batches it no longer has are
// counted in Message.Missed. A payload that does not decode is reported
// through bad (with its sequence number) and skipped, as llm-d's pool drops such a message.
func Subscribe(ctx context.Context, cfg SubscriberConfig, handle func(Message), bad func(seq uint64, err error)) error {
	if cfg.ReplayTimeout <= 0 {
		cfg.ReplayTimeout = 2 * time.Second
	}
	// A lost connection ends Subscribe (Recv fails) rather than reconnecting underneath:
	// the caller subscribes again and, with a replay socket, starts over from what the
	// publisher buffers, which is right whether or not the publisher restarted.
	sub := zmq4.NewSub(ctx, quiet, zmq4.WithDialerMaxRetries(-1), zmq4.WithDialerRetry(100*time.Millisecond))
	defer sub.Close()
	if err := sub.SetOption(zmq4.OptionSubscribe, cfg.TopicFilter); err != nil {
		return err
	}
	if err := sub.Dial(bounded(cfg.Endpoint)); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("kv events: %s: %w", cfg.Endpoint, err)
	}
	var next uint64
	started, overlap := false, false
	deliver := func(topic string, upTo uint64) {
		// The replay socket's batches from next up to (not including) upTo; they carry no
		// topic, so they take the one of the live message that revealed the gap.
		for _, r := range replay(ctx, cfg, next) {
			if r.seq < next || r.seq >= upTo {
				continue
			}
			b, err := Decode(r.payload)
			if err != nil {
				bad(r.seq, err)
			} else {
				handle(Message{Topic: topic, Seq: r.seq, Batch: b, Missed: r.seq - next, Replayed: true})
			}
			started, next = true, r.seq+1
		}
	}
	// A SUB socket's subscription takes effect some time after Dial returns (the
	// connection and the subscription message are asynchronous): a batch published after
	// the first replay but before then reaches neither, and with no batch after it the
	// subscriber would never see the gap. So until the first live message arrives, the
	// replay socket is asked again every joinPoll, for at most joinWindow.
	var catchUp <-chan time.Time
	joinDeadline := time.Now().Add(joinWindow)
	if cfg.ReplayEndpoint != "" {
		// What the publisher sent before this subscriber joined; the live stream may then
		// repeat the last of it.
		deliver("", math.MaxUint64)
		overlap = started
		t := time.NewTicker(joinPoll)
		defer t.Stop()
		catchUp = t.C
	}
	type received struct {
		msg zmq4.Msg
		err error
	}
	msgs := make(chan received)
	go func() {
		for {
			msg, err := sub.Recv()
			select {
			case msgs <- received{msg, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		var msg zmq4.Msg
		var err error
		select {
		case r := <-msgs:
			msg, err = r.msg, r.err
		case <-ctx.Done():
			return ctx.Err()
		case <-catchUp:
			if time.Now().After(joinDeadline) {
				catchUp = nil
				continue
			}
			deliver("", math.MaxUint64)
			overlap = started
			continue
		}
		catchUp = nil // a live message: the subscription is in effect
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("kv events: %s: %w", cfg.Endpoint, err)
		}
		if len(msg.Frames) != 3 || len(msg.Frames[1]) != 8 {
			bad(0, fmt.Errorf("a message of %d frames, want [topic, seq (8 bytes), payload]", len(msg.Frames)))
			continue
		}
		topic := string(msg.Frames[0])
		seq := binary.BigEndian.Uint64(msg.Frames[1])
		restarted := false
		switch {
		case started && seq < next && overlap:
			// Published while the first replay ran: delivered already.
			continue
		case started && seq < next:
			// A PUB socket sends nothing twice: the publisher started over.
			restarted, next = true, 0
		case started && seq == next:
		case cfg.ReplayEndpoint != "":
			// The start of the subscription, or a gap: fill what the replay socket has.
			deliver(topic, seq)
		}
		overlap = false
		missed := seq - next
		if restarted {
			missed = seq
		}
		started, next = true, seq+1
		b, err := Decode(msg.Frames[2])
		if err != nil {
			bad(seq, err)
			continue
		}
		handle(Message{Topic: topic, Seq: seq, Batch: b, Missed: missed, Restarted: restarted})
	}
}

// joinPoll and joinWindow pace the replays a new subscription asks for until its first
// live message (Subscribe).
const (
	joinPoll   = 250 * time.Millisecond
	joinWindow = 10 * time.Second
)

// replay asks cfg.ReplayEndpoint for the buffered batches from start on, as vLLM's replay
// socket serves them; nil when it does not answer within cfg.ReplayTimeout.
func replay(ctx context.Context, cfg SubscriberConfig, start uint64) []buffered {
	ctx, cancel := context.WithTimeout(ctx, cfg.ReplayTimeout)
	defer cancel()
	d := zmq4.NewDealer(ctx, quiet, zmq4.WithDialerMaxRetries(0))
	defer d.Close()
	done := make(chan []buffered, 1)
	go func() {
		out, _ := replayOn(d, cfg.ReplayEndpoint, start)
		done <- out
	}()
	select {
	case out := <-done:
		return out
	case <-ctx.Done():
		d.Close() // ends a pending Recv
		<-done
		return nil
	}
}

func replayOn(d zmq4.Socket, ep string, start uint64) ([]buffered, error) {
	if err := d.Dial(bounded(ep)); err != nil {
		return nil, err
	}
	var startb [8]byte
	binary.BigEndian.PutUint64(startb[:], start)
	if err := d.SendMulti(zmq4.NewMsgFrom(nil, startb[:])); err != nil {
		return nil, err
	}
	var out []buffered
	for {
		msg, err := d.Recv()
		if err != nil {
			return out, err
		}
		// [empty, seq, payload]
		if len(msg.Frames) != 3 || len(msg.Frames[1]) != 8 {
			return out, errors.New("malformed replay message")
		}
		if string(msg.Frames[1]) == string(endSeq) {
			return out, nil
		}
		out = append(out, buffered{binary.BigEndian.Uint64(msg.Frames[1]), msg.Frames[2]})
	}
}
