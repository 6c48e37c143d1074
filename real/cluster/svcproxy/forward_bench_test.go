package svcproxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// startBenchProxy serves one Service port on a free 127.1.255.254 port in front of
// backend, without an API server, and stops when the benchmark ends.
func startBenchProxy(b *testing.B, backend string) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.1.255.254:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	p := &proxier{logf: func(string, ...any) {}, dialTimeout: time.Second,
		ports: map[string]map[portKey]*portProxy{}, conns: map[net.Conn]struct{}{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if err := p.setPorts("bench/svc", map[portKey]wanted{{addr}: {endpoints: []string{backend}}}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.closeAll)
	return addr.String()
}

// startBenchBackend reads each connection to its EOF and answers with size bytes.
func startBenchBackend(b *testing.B, size int) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	payload := make([]byte, size)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
				c.Write(payload)
			}()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkForward compares a connection through the proxy with one straight to the
// backend: a short exchange per connection (the cost of the extra accept, dial and
// goroutines), and a 16 MiB response (the copy's throughput).
func BenchmarkForward(b *testing.B) {
	for _, bc := range []struct {
		name string
		size int
	}{{"exchange", 64}, {"16MiB", 16 << 20}} {
		for _, via := range []string{"direct", "proxy"} {
			b.Run(bc.name+"/"+via, func(b *testing.B) {
				addr := startBenchBackend(b, bc.size)
				if via == "proxy" {
					addr = startBenchProxy(b, addr)
				}
				b.SetBytes(int64(bc.size))
				for b.Loop() {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						b.Fatal(err)
					}
					c.Write([]byte("ping"))
					c.(*net.TCPConn).CloseWrite()
					n, err := io.Copy(io.Discard, c)
					c.Close()
					if err != nil || n != int64(bc.size) {
						b.Fatalf("read %d bytes, %v; want %d", n, err, bc.size)
					}
				}
			})
		}
	}
}
