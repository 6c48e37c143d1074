package kvevents

import (
	"context"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"
)

// zmtpGreetingBytes is a valid ZMTP 3.0 NULL-mechanism greeting (RFC 23).
func zmtpGreetingBytes() []byte {
	g := make([]byte, zmtpGreeting)
	g[0], g[9], g[10], g[11] = 0xff, 0x7f, 3, 0
	copy(g[12:], "NULL")
	return g
}

func zmtpFrame(flags byte, size uint64, long bool) []byte {
	if !long {
		return append([]byte{flags, byte(size)}, make([]byte, size)...)
	}
	h := make([]byte, 9)
	h[0] = flags | zmtpLong
	binary.BigEndian.PutUint64(h[1:], size)
	if size > 1<<20 {
		return h // the body is never sent: the scanner must stop at the header
	}
	return append(h, make([]byte, size)...)
}

func TestZMTPScannerBoundsFrames(t *testing.T) {
	const max = 1000
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		stream  []byte
		wantErr bool
	}{
		{"greeting only", zmtpGreetingBytes(), false},
		{"short frames", cat(zmtpGreetingBytes(), zmtpFrame(0x04, 25, false), zmtpFrame(0x01, 255, false), zmtpFrame(0, 0, false)), false},
		{"long frame at the limit", cat(zmtpGreetingBytes(), zmtpFrame(0, max, true), zmtpFrame(0, 3, false)), false},
		{"long frame over the limit", cat(zmtpGreetingBytes(), zmtpFrame(0x04, max+1, true)), true},
		{"2^40-byte command after a frame", cat(zmtpGreetingBytes(), zmtpFrame(0, 7, false), zmtpFrame(0x04, 1<<40, true)), true},
		{"2^64-1 bytes", cat(zmtpGreetingBytes(), zmtpFrame(0, 1<<64-1, true)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Every split of the stream into two reads gives the same answer.
			for cut := 0; cut <= len(tc.stream); cut++ {
				z := zmtpScanner{max: max}
				err := z.scan(tc.stream[:cut])
				if err == nil {
					err = z.scan(tc.stream[cut:])
				}
				if (err != nil) != tc.wantErr {
					t.Fatalf("cut at %d: err = %v, want error %v", cut, err, tc.wantErr)
				}
			}
			z := zmtpScanner{max: max}
			for i := range tc.stream { // byte by byte
				if err := z.scan(tc.stream[i : i+1]); err != nil {
					if !tc.wantErr {
						t.Fatalf("byte %d: %v", i, err)
					}
					return
				}
			}
			if tc.wantErr {
				t.Fatal("byte by byte: no error")
			}
		})
	}
}

// hostilePeer listens on loopback and answers every connection with a valid greeting
// then a READY command whose header declares a 2^40-byte body.
func hostilePeer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write(append(zmtpGreetingBytes(), zmtpFrame(0x04, 1<<40, true)...))
			go func() { // drain until the other side hangs up
				buf := make([]byte, 512)
				for {
					if _, err := c.Read(buf); err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// TestSubscribeRefusesHugeFrame: a publisher (or anything listening where an engine's
// events were expected) that declares a 2^40-byte frame ends the subscription with an
// error; go-zeromq allocated the declared size before and the router died.
func TestSubscribeRefusesHugeFrame(t *testing.T) {
	addr := hostilePeer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Subscribe(ctx, SubscriberConfig{Endpoint: "tcp://" + addr}, func(Message) { t.Error("a message was delivered") }, func(uint64, error) {})
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Subscribe = %v (ctx %v); want an error before the deadline", err, ctx.Err())
	}
	// The replay socket is read through the same transport.
	if got := replay(ctx, SubscriberConfig{ReplayEndpoint: "tcp://" + addr, ReplayTimeout: 5 * time.Second}, 0); got != nil {
		t.Errorf("replay from a hostile peer = %v; want nothing", got)
	}
}

// TestPublisherSurvivesHugeFrame: a client of an engine's replay socket that declares a
// 2^40-byte frame is dropped, and the publisher goes on serving replays.
func TestPublisherSurvivesHugeFrame(t *testing.T) {
	p := newTestPublisher(t, 10, "kv@engine@m")
	if _, err := p.Publish(batchOf(0)); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.ReplayAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(append(zmtpGreetingBytes(), zmtpFrame(0x04, 1<<40, true)...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 4096)
	for { // the publisher hangs up (after its own greeting)
		if _, err := c.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the publisher kept the hostile connection open")
			}
			break
		}
	}
	got := replay(context.Background(), SubscriberConfig{ReplayEndpoint: "tcp://" + p.ReplayAddr().String(), ReplayTimeout: 10 * time.Second}, 0)
	if len(got) != 1 || got[0].seq != 0 {
		t.Fatalf("replay after the hostile client = %+v; want batch 0", got)
	}
}

func TestBoundedEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://127.0.0.1:5557": boundedScheme + "://127.0.0.1:5557",
		"tcp://*:5557":         boundedScheme + "://*:5557",
		"ipc:///tmp/x":         "ipc:///tmp/x",
		"inproc://x":           "inproc://x",
	} {
		if got := bounded(in); got != want {
			t.Errorf("bounded(%q) = %q, want %q", in, got, want)
		}
	}
	if !strings.HasPrefix(bounded("tcp://h:1"), boundedScheme) {
		t.Error("tcp not bounded")
	}
}

func FuzzZMTPScanner(f *testing.F) {
	f.Add(append(zmtpGreetingBytes(), zmtpFrame(0x04, 25, false)...), 3)
	f.Add(append(zmtpGreetingBytes(), zmtpFrame(0, 1<<40, true)...), 70)
	f.Fuzz(func(t *testing.T, stream []byte, cut int) {
		whole := zmtpScanner{max: 1 << 16}
		errWhole := whole.scan(stream)
		if cut < 0 {
			cut = -cut
		}
		cut %= len(stream) + 1
		split := zmtpScanner{max: 1 << 16}
		errSplit := split.scan(stream[:cut])
		if errSplit == nil {
			errSplit = split.scan(stream[cut:])
		}
		if (errWhole == nil) != (errSplit == nil) {
			t.Fatalf("whole: %v; split at %d: %v", errWhole, cut, errSplit)
		}
	})
}
