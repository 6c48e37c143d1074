package kvevents

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/google/go-cmp/cmp"
)

// newTestPublisher binds a publisher and its replay socket on free loopback ports.
func newTestPublisher(t *testing.T, bufferSteps int, topic string) *Publisher {
	t.Helper()
	p, err := NewPublisher(Config{EnableKVCacheEvents: true, Publisher: "zmq", Endpoint: "tcp://127.0.0.1:0", Bind: true,
		ReplayEndpoint: "tcp://127.0.0.1:0", BufferSteps: bufferSteps, HWM: 1000, MaxQueueSize: 1000, Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func batchOf(i int) Batch {
	return Batch{TS: float64(i), Events: []Event{{Type: BlockRemoved, BlockHashes: []uint64{uint64(i)}}}, DataParallelRank: ptr(int64(0))}
}

// collector gathers what a subscriber delivers.
type collector struct {
	mu   sync.Mutex
	msgs []Message
}

func (c *collector) handle(m Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
}

func (c *collector) snapshot() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSubscribeReplaysMissedBatches: batches published before a subscriber joins (a PUB
// socket drops them) come from the replay socket, in sequence order from 0, then the live
// ones follow; with a buffer smaller than what was missed, the batches gone from it are
// counted in Missed.
func TestSubscribeReplaysMissedBatches(t *testing.T) {
	for _, tc := range []struct {
		name        string
		bufferSteps int
		early       int  // batches published before the subscriber
		lost        bool // whether the buffer lost some batches published before the subscriber
	}{
		{"buffer holds all", 100, 5, false},
		{"buffer holds the last 2", 2, 5, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPublisher(t, tc.bufferSteps, "kv@engine@m")
			for i := range tc.early {
				if seq, err := p.Publish(batchOf(i)); err != nil || seq != uint64(i) {
					t.Fatalf("Publish %d = %d, %v", i, seq, err)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var c collector
			done := make(chan error, 1)
			go func() {
				done <- Subscribe(ctx, SubscriberConfig{Endpoint: "tcp://" + p.Addr().String(),
					ReplayEndpoint: "tcp://" + p.ReplayAddr().String(), TopicFilter: "kv@"}, c.handle,
					func(seq uint64, err error) { t.Errorf("batch %d: %v", seq, err) })
			}()
			// The subscription reaches the publisher some time after Dial: publish until a
			// live batch arrives.
			n := tc.early
			waitFor(t, "a live batch", func() bool {
				if _, err := p.Publish(batchOf(n)); err != nil {
					t.Fatal(err)
				}
				n++
				time.Sleep(10 * time.Millisecond)
				return len(c.snapshot()) > 0
			})
			waitFor(t, "every batch", func() bool {
				msgs := c.snapshot()
				return len(msgs) > 0 && msgs[len(msgs)-1].Seq == uint64(n-1)
			})
			cancel()
			<-done
			msgs := c.snapshot()
			first := msgs[0].Seq
			if (first > 0) != tc.lost {
				t.Errorf("first batch delivered: %d", first)
			}
			var got, want []uint64
			for i, m := range msgs {
				got = append(got, m.Seq)
				want = append(want, first+uint64(i))
				if m.Batch.Events[0].BlockHashes[0] != m.Seq || (!m.Replayed && m.Topic != "kv@engine@m") {
					t.Errorf("batch %d: topic %q, events %+v", m.Seq, m.Topic, m.Batch.Events)
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("delivered sequence numbers (-want +got):\n%s", diff)
			}
			if msgs[0].Missed != first {
				t.Errorf("first batch %d: Missed = %d, want %d", first, msgs[0].Missed, first)
			}
			for _, m := range msgs[1:] {
				if m.Missed != 0 || m.Restarted {
					t.Errorf("batch %d: Missed %d, Restarted %v", m.Seq, m.Missed, m.Restarted)
				}
			}
		})
	}
}

// TestReplayProtocol speaks vLLM's replay protocol to the ROUTER socket as a DEALER client:
// [empty, start seq] in, [empty, seq, payload] for each buffered batch from start on, then
// [empty, -1, empty].
func TestReplayProtocol(t *testing.T) {
	p := newTestPublisher(t, 3, "")
	var payloads [][]byte
	for i := range 5 {
		p.Publish(batchOf(i))
		b, _ := Encode(batchOf(i))
		payloads = append(payloads, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d := zmq4.NewDealer(ctx)
	defer d.Close()
	if err := d.Dial("tcp://" + p.ReplayAddr().String()); err != nil {
		t.Fatal(err)
	}
	var start [8]byte
	binary.BigEndian.PutUint64(start[:], 3)
	if err := d.SendMulti(zmq4.NewMsgFrom(nil, start[:])); err != nil {
		t.Fatal(err)
	}
	var got [][][]byte
	for {
		msg, err := d.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, msg.Frames)
		if string(msg.Frames[1]) == string(endSeq) {
			break
		}
	}
	seq := func(n uint64) []byte { var b [8]byte; binary.BigEndian.PutUint64(b[:], n); return b[:] }
	want := [][][]byte{
		{{}, seq(3), payloads[3]},
		{{}, seq(4), payloads[4]},
		{{}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, {}},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b []byte) bool { return string(a) == string(b) })); diff != "" {
		t.Errorf("replay of 3.. (-want +got):\n%s", diff)
	}
}
