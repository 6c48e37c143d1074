package kvevents

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// MaxFrameBytes bounds one ZMTP frame a KV-event socket accepts. go-zeromq allocates a
// frame's body from the length its 9-byte header declares, before reading it, so a peer
// declaring a 2^40-byte frame crashed the process (a router dialling an engine, or an
// engine's replay socket that anyone on the network can reach). vLLM's batches are far
// smaller: a 128k-token prefill's BlockStored events take well under a megabyte.
const MaxFrameBytes = 64 << 20

// boundedScheme is the zmq4 transport that every KV-event socket uses in place of tcp:
// TCP whose connections refuse a frame header declaring more than MaxFrameBytes, before
// zmq4 sees the header (libzmq's ZMQ_MAXMSGSIZE, which go-zeromq lacks).
const boundedScheme = "servelab-tcp"

func init() {
	if err := zmq4.RegisterTransport(boundedScheme, boundedTransport{inner: transport.New("tcp"), max: MaxFrameBytes}); err != nil {
		panic(err)
	}
}

// bounded rewrites a tcp:// endpoint to the bounded transport; other schemes (ipc,
// inproc) are local and left alone.
func bounded(ep string) string {
	if rest, ok := strings.CutPrefix(ep, "tcp://"); ok {
		return boundedScheme + "://" + rest
	}
	return ep
}

type boundedTransport struct {
	inner transport.Transport
	max   uint64
}

func (t boundedTransport) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	c, err := t.inner.Dial(ctx, d, addr)
	if err != nil {
		return nil, err
	}
	return &frameLimitConn{Conn: c, zmtp: zmtpScanner{max: t.max}}, nil
}

func (t boundedTransport) Listen(ctx context.Context, addr string) (net.Listener, error) {
	l, err := t.inner.Listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	return boundedListener{Listener: l, max: t.max}, nil
}

func (t boundedTransport) Addr(ep string) (string, error) { return t.inner.Addr(ep) }

type boundedListener struct {
	net.Listener
	max uint64
}

func (l boundedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &frameLimitConn{Conn: c, zmtp: zmtpScanner{max: l.max}}, nil
}

// frameLimitConn checks the ZMTP stream it reads before handing it on.
type frameLimitConn struct {
	net.Conn
	zmtp zmtpScanner
}

func (c *frameLimitConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if serr := c.zmtp.scan(p[:n]); serr != nil {
			c.Conn.Close()
			return 0, serr
		}
	}
	return n, err
}

// zmtpScanner follows a ZMTP 3.x byte stream (RFC 23/ZMTP: a 64-byte greeting, then
// frames of a flags byte, a 1-byte or, with the LONG flag, 8-byte big-endian size, and
// the body) and fails on a frame larger than max.
type zmtpScanner struct {
	max      uint64
	greeting int    // greeting bytes seen, up to zmtpGreeting
	header   []byte // the current frame header so far (flags, size bytes)
	bodyLeft uint64 // body bytes of the current frame still to pass
}

const (
	zmtpGreeting = 64
	zmtpLong     = 0x02
)

func (z *zmtpScanner) scan(p []byte) error {
	for len(p) > 0 {
		switch {
		case z.greeting < zmtpGreeting:
			n := min(len(p), zmtpGreeting-z.greeting)
			z.greeting += n
			p = p[n:]
		case z.bodyLeft > 0:
			n := uint64(len(p))
			if n > z.bodyLeft {
				n = z.bodyLeft
			}
			z.bodyLeft -= n
			p = p[n:]
		default:
			z.header = append(z.header, p[0])
			p = p[1:]
			want := 2
			if z.header[0]&zmtpLong != 0 {
				want = 9
			}
			if len(z.header) < want {
				continue
			}
			size := uint64(z.header[1])
			if want == 9 {
				size = binary.BigEndian.Uint64(z.header[1:9])
			}
			z.header = z.header[:0]
			if size > z.max {
				return fmt.Errorf("kv events: a ZMTP frame of %d bytes exceeds the %d-byte limit", size, z.max)
			}
			z.bodyLeft = size
		}
	}
	return nil
}
