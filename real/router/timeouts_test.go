package router

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serveLikeTheCLI serves h with the http.Server settings of 'servelab router'.
func serveLikeTheCLI(t *testing.T, h http.Handler, idle time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h, idle)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestTricklingBodyIsCutOff sends a body one byte at a time, slower than the body timeout
// allows: the router answers (408, or 401 at once without its key) and closes the
// connection within the timeout.
func TestTricklingBodyIsCutOff(t *testing.T) {
	up := newStub(t, "a")
	close(up.release)
	for _, tc := range []struct {
		name   string
		key    string
		status int
		typ    string
	}{
		{"read by the proxy", "", http.StatusRequestTimeout, "RequestTimeoutError"},
		{"refused unread", "router-key", http.StatusUnauthorized, "AuthenticationError"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := startRouter(t, Config{BodyTimeout: 300 * time.Millisecond, APIKey: tc.key}, up.URL)
			url := serveLikeTheCLI(t, r.Handler(), time.Minute)
			conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					if _, err := conn.Write([]byte(" ")); err != nil {
						return
					}
				}
			}()
			start := time.Now()
			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no response to a trickled body after %v: %v", time.Since(start), err)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if typ := decodeError(t, resp); typ != tc.typ {
				t.Errorf("error.type %q, want %q", typ, tc.typ)
			}
			// A close with trickled bytes still unread reaches this side as a reset rather
			// than EOF, depending on timing; both mean the router closed the connection.
			// Only the read deadline passing means it did not.
			if _, err := io.ReadAll(br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the connection was not closed after %v: %v", time.Since(start), err)
			}
		})
	}
}

// TestLongStreamOutlivesTimeouts streams a response for several times the body and idle
// timeouts through the router: none of them cuts it.
func TestLongStreamOutlivesTimeouts(t *testing.T) {
	const chunks, gap = 12, 100 * time.Millisecond
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range chunks {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(gap):
			}
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(slow.Close)
	r, _ := startRouter(t, Config{BodyTimeout: 200 * time.Millisecond}, slow.URL)
	url := serveLikeTheCLI(t, r.Handler(), 200*time.Millisecond)
	eventually(t, "the endpoint", r.endpoints[0].healthy)
	start := time.Now()
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || !strings.HasSuffix(string(body), "data: 11\n\ndata: [DONE]\n\n") {
		t.Fatalf("after %v: %v, body %q", time.Since(start), err, body)
	}
	if d := time.Since(start); d < chunks*gap {
		t.Errorf("the stream took %v, shorter than the %v it was meant to", d, chunks*gap)
	}
}

// TestOverTheCapIsShed holds MaxInFlight streams open: the next request is refused with
// 429 and Retry-After, /health and /metrics still answer, and once the streams end requests
// pass again.
func TestOverTheCapIsShed(t *testing.T) {
	up := newStub(t, "a")
	r, url := startRouter(t, Config{MaxInFlight: 2}, up.URL)
	eventually(t, "the endpoint", r.endpoints[0].healthy)
	var held []*http.Response
	for range 2 {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","stream":true}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || !strings.HasPrefix(line, "data:") {
			t.Fatalf("first line %q, %v", line, err)
		}
		held = append(held, resp)
	}
	client := &http.Client{Timeout: 10 * time.Second} // without a cap the request would wait
	resp, err := client.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("over the cap: status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if typ := decodeError(t, resp); typ != "RateLimitError" {
		t.Errorf("error.type %q", typ)
	}
	resp.Body.Close()
	for _, path := range []string{"/health", "/metrics"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s at the cap: status %d", path, resp.StatusCode)
		}
	}
	if n := counterValue(r.shed); n != 1 {
		t.Errorf("servelab_router_shed_total %v, want 1", n)
	}
	close(up.release)
	for _, resp := range held {
		io.Copy(io.Discard, resp.Body)
	}
	eventually(t, "a request under the cap", func() bool {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x"}`))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}
