package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// prefixTokenizer is byteTokenizer with EncodePrefix: it counts the bytes it encodes,
// and each EncodePrefix call may wait on gate (counting how many wait at once).
type prefixTokenizer struct {
	byteTokenizer
	encoded           atomic.Int64 // bytes looked at by Encode and EncodePrefix
	active, maxSeen   atomic.Int64
	gate              chan struct{} // nil: no waiting
	entered           chan struct{} // gets a value as each call starts, if not nil
	mu                sync.Mutex
	cancelledInEncode int
}

func (p *prefixTokenizer) Encode(text string, addSpecial bool) []int32 {
	p.encoded.Add(int64(len(text)))
	return p.byteTokenizer.Encode(text, addSpecial)
}

func (p *prefixTokenizer) EncodePrefix(ctx context.Context, text string, addSpecial bool, maxTokens int) ([]int32, bool, error) {
	n := p.active.Add(1)
	defer p.active.Add(-1)
	for {
		m := p.maxSeen.Load()
		if n <= m || p.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if p.entered != nil {
		p.entered <- struct{}{}
	}
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-ctx.Done():
			p.mu.Lock()
			p.cancelledInEncode++
			p.mu.Unlock()
			return nil, false, ctx.Err()
		}
	}
	var ids []int32
	if addSpecial {
		ids = append(ids, bosID)
	}
	for i := 0; i < len(text) && len(ids) <= maxTokens; i++ {
		p.encoded.Add(1)
		ids = append(ids, int32(text[i]))
	}
	if len(ids) > maxTokens {
		return ids[:maxTokens+1], true, nil
	}
	return ids, false, nil
}

func errorBody(t *testing.T, data []byte) (typ string, param any, msg string) {
	t.Helper()
	var e struct {
		Error struct {
			Type    string `json:"type"`
			Param   any    `json:"param"`
			Message string `json:"message"`
			Code    int    `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatalf("not an OpenAI error: %v: %.300s", err, data)
	}
	return e.Error.Type, e.Error.Param, e.Error.Message
}

// TestHugePromptBounded: a prompt far over the context is refused after encoding about
// max_model_len bytes of it, completions and chat alike, with the usual 400.
func TestHugePromptBounded(t *testing.T) {
	tok := &prefixTokenizer{}
	f := start(t, options{server: func(c *Config) { c.Tokenizer = tok }})
	huge := strings.Repeat("x", 4<<20)
	for _, tc := range []struct{ path, body, param string }{
		{"/v1/completions", `{"prompt": "` + huge + `"}`, "prompt"},
		{"/v1/completions", `{"prompt": ["` + huge + `"]}`, "prompt"},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": "` + huge + `"}]}`, "messages"},
	} {
		tok.encoded.Store(0)
		resp, data := f.post(tc.path, tc.body)
		typ, param, msg := errorBody(t, data)
		if resp.StatusCode != http.StatusBadRequest || typ != "BadRequestError" || param != tc.param ||
			!strings.Contains(msg, fmt.Sprintf("maximum context length is %d tokens. However, your request has more than %d input tokens", testMaxModelLen, testMaxModelLen)) {
			t.Errorf("%s: status %d, %s %v %q", tc.path, resp.StatusCode, typ, param, msg)
		}
		if n := tok.encoded.Load(); n > 2*testMaxModelLen {
			t.Errorf("%s: encoded %d bytes of a %d-byte prompt to refuse it", tc.path, n, len(huge))
		}
	}
	// A prompt that fits is still served.
	resp, data := f.post("/v1/completions", `{"prompt": "hello", "max_tokens": 2}`)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d: %s", resp.StatusCode, data)
	}
}

// TestTokenizingBounded: at most MaxTokenizing prompts are encoded at once, and the
// encoding of a client that left stops.
func TestTokenizingBounded(t *testing.T) {
	tok := &prefixTokenizer{gate: make(chan struct{}), entered: make(chan struct{}, 16)}
	f := start(t, options{server: func(c *Config) { c.Tokenizer = tok; c.MaxTokenizing = 2 }})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+"/v1/completions", strings.NewReader(`{"prompt": "hi", "max_tokens": 1}`))
			if resp, err := f.client.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for range 2 {
		<-tok.entered // two are inside EncodePrefix, three wait for a slot
	}
	select {
	case <-tok.entered:
		t.Fatal("a third prompt is being encoded with MaxTokenizing 2")
	case <-time.After(100 * time.Millisecond):
	}
	cancel() // every client leaves: the two inside stop, the three waiting never enter
	wg.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for tok.active.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := tok.active.Load(); n != 0 {
		t.Errorf("%d prompts still being encoded after their clients left", n)
	}
	if m := tok.maxSeen.Load(); m != 2 {
		t.Errorf("at most %d prompts encoded at once, want 2", m)
	}
}

// rawRequest writes a request's head announcing n body bytes on a fresh connection.
func rawRequest(t *testing.T, url string, n int) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", n)
	return conn
}

// TestSlowBodyTimedOut: a client trickling its body is answered 408 and cut off once
// BodyTimeout has passed.
func TestSlowBodyTimedOut(t *testing.T) {
	const timeout = 300 * time.Millisecond
	f := start(t, options{server: func(c *Config) { c.BodyTimeout = timeout }})
	conns := make([]net.Conn, 5)
	for i := range conns {
		conns[i] = rawRequest(t, f.url, 100)
	}
	began := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	for _, c := range conns {
		go func() { // a byte every 50 ms, until the server hangs up
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := c.Write([]byte("{")); err != nil {
					return
				}
			}
		}()
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("conn %d: no response: %v", i, err)
		}
		data, _ := io.ReadAll(resp.Body)
		if typ, _, _ := errorBody(t, data); resp.StatusCode != http.StatusRequestTimeout || typ != "RequestTimeoutError" {
			t.Errorf("conn %d: status %d: %s", i, resp.StatusCode, data)
		}
		// A FIN, or a RST when the trickler's next byte reached the closed socket: either
		// way the server hung up.
		if _, err := c.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("conn %d: still open after the 408 (%v)", i, err)
		}
	}
	if d := time.Since(began); d < timeout {
		t.Errorf("cut off after %v, before the %v timeout", d, timeout)
	}
}

// TestLongStreamOutlivesBodyTimeout: the body deadline ends with the body; a stream
// running many times longer is not cut.
func TestLongStreamOutlivesBodyTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	f := start(t, options{server: func(c *Config) { c.BodyTimeout = timeout }})
	f.exec.setDelay(40 * time.Millisecond)
	defer f.exec.setDelay(0)
	began := time.Now()
	resp := f.openStream(context.Background(), "/v1/completions", `{"prompt": "abc", "max_tokens": 20, "ignore_eos": true, "stream": true}`)
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	events, done := sseEvents(t, data)
	if !done || !strings.Contains(string(data), `"finish_reason":"length"`) {
		t.Fatalf("stream cut after %v (%d events, [DONE] %v): %.300s", time.Since(began), len(events), done, data)
	}
	if d := time.Since(began); d < 3*timeout {
		t.Fatalf("the stream took %v: not longer than the body timeout %v, the test shows nothing", d, timeout)
	}
}

// TestMaxInFlightSheds: over MaxInFlight a request gets a 503 in OpenAI's shape with
// Retry-After, while /health answers; when the slot frees, requests are served again.
func TestMaxInFlightSheds(t *testing.T) {
	f := start(t, options{server: func(c *Config) { c.MaxInFlight = 1 }})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.url+"/v1/kv_events", nil)
	held, err := f.client.Do(req) // a long-lived stream holds the one slot
	if err != nil {
		t.Fatal(err)
	}
	resp, data := f.post("/v1/completions", `{"prompt": "hi", "max_tokens": 1}`)
	typ, _, msg := errorBody(t, data)
	if resp.StatusCode != http.StatusServiceUnavailable || typ != "ServiceUnavailableError" || resp.Header.Get("Retry-After") == "" || !strings.Contains(msg, "--max-inflight") {
		t.Errorf("over the cap: status %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), data)
	}
	if resp, data := f.do(http.MethodGet, "/health", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("/health over the cap: status %d: %s", resp.StatusCode, data)
	}
	cancel()
	held.Body.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, data := f.post("/v1/completions", `{"prompt": "hi", "max_tokens": 1}`)
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot never freed: status %d: %s", resp.StatusCode, data)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bytesTokenizer is prefixTokenizer with a BytesPerToken bound: one byte a token.
type bytesTokenizer struct{ prefixTokenizer }

func (*bytesTokenizer) BytesPerToken() int { return 1 }

// TestBodySizedFromContext: with a tokenizer that bounds the bytes of a token, the body
// limit is what the longest prompt that fits needs, fully escaped, plus 1 MiB: such a
// prompt is read (and answered on its merits); a body beyond it is refused unread.
func TestBodySizedFromContext(t *testing.T) {
	tok := &bytesTokenizer{}
	f := start(t, options{server: func(c *Config) { c.Tokenizer = tok }})
	want := int64(1<<20 + 6*(testMaxModelLen+1))
	if f.srv.maxBody != want {
		t.Fatalf("body limit %d, want %d", f.srv.maxBody, want)
	}
	escaped := strings.Repeat(`\u0061`, testMaxModelLen-2) // the longest prompt that fits, every byte escaped
	resp, data := f.post("/v1/completions", `{"prompt": "`+escaped+`", "max_tokens": 1}`)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a fitting prompt, escaped: status %d: %.300s", resp.StatusCode, data)
	}
	resp, data = f.post("/v1/completions", `{"prompt": "`+strings.Repeat("x", int(want))+`"}`)
	typ, _, msg := errorBody(t, data)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || typ != "RequestTooLargeError" || !strings.Contains(msg, "--max-body-bytes") {
		t.Errorf("over the limit: status %d: %s", resp.StatusCode, data)
	}
	if n := tok.encoded.Load(); n > testMaxModelLen {
		t.Errorf("encoded %d bytes", n)
	}
	srv, err := New(Config{Engine: f.eng, Tokenizer: byteTokenizer{}, ModelName: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	if srv.maxBody != DefaultMaxBodyBytes {
		t.Errorf("without BytesPerToken: body limit %d, want %d", srv.maxBody, DefaultMaxBodyBytes)
	}
}

// TestLargeBodiesGated: requests with bodies over 1 MiB are read, decoded and encoded at
// most MaxTokenizing at a time; one that waits longer than BodyTimeout for its turn gets
// a 503 with Retry-After, while small requests are served meanwhile.
func TestLargeBodiesGated(t *testing.T) {
	tok := &prefixTokenizer{gate: make(chan struct{}), entered: make(chan struct{}, 4)}
	f := start(t, options{server: func(c *Config) {
		c.Tokenizer = tok
		c.MaxTokenizing = 1
		c.BodyTimeout = 300 * time.Millisecond
	}})
	big := `{"prompt": "` + strings.Repeat("x", 2<<20) + `"}`
	first := make(chan int, 1)
	go func() {
		resp, _ := f.post("/v1/completions", big)
		first <- resp.StatusCode
	}()
	<-tok.entered // the first large request is being encoded
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+"/v1/completions", strings.NewReader(big))
	resp, err := f.client.Do(req)
	if err != nil {
		close(tok.gate)
		t.Fatalf("a second large request, while the first is encoded: %v", err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	typ, _, _ := errorBody(t, data)
	if resp.StatusCode != http.StatusServiceUnavailable || typ != "ServiceUnavailableError" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a second large request: status %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), data)
	}
	if resp, data = f.post("/v1/completions", `{"prompt": [104, 105], "max_tokens": 1}`); resp.StatusCode != http.StatusOK {
		t.Errorf("a small request meanwhile: status %d: %s", resp.StatusCode, data)
	}
	close(tok.gate)
	if code := <-first; code != http.StatusBadRequest {
		t.Errorf("the first large request: status %d, want 400 (longer than the context)", code)
	}
	if n := f.srv.largeActive.Load(); n != 0 {
		t.Errorf("%d large-body slots still held", n)
	}
}

// TestHugePromptRefusedUndecoded: with the body limit raised past what the context needs,
// a 30 MB prompt, plain or as a list of one, is refused with the usual 400 without being
// copied, decoded or encoded. The server's allocations are bounded by the body it must
// read (one buffer of Content-Length) plus 4 MiB for everything else (headers, the small
// fields, the answer; the client writes in 4 KiB chunks): decoding the body into fields,
// then the prompt into a string, used to allocate three times the body.
func TestHugePromptRefusedUndecoded(t *testing.T) {
	tok := &bytesTokenizer{}
	f := start(t, options{server: func(c *Config) { c.Tokenizer = tok; c.MaxBodyBytes = DefaultMaxBodyBytes }})
	huge := strings.Repeat("hello world ", 30<<20/12)
	for _, tc := range []struct{ name, body string }{
		{"string", `{"prompt": "` + huge + `", "max_tokens": 1}`},
		{"list of one", `{"max_tokens": 1, "prompt": [ "` + huge + `" ] }`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok.encoded.Store(0)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			resp, data := f.post("/v1/completions", tc.body)
			runtime.ReadMemStats(&after)
			typ, param, msg := errorBody(t, data)
			if resp.StatusCode != http.StatusBadRequest || typ != "BadRequestError" || param != "prompt" ||
				!strings.Contains(msg, fmt.Sprintf("maximum context length is %d tokens. However, your request has more than %d input tokens", testMaxModelLen, testMaxModelLen)) {
				t.Errorf("status %d, %s %v %q", resp.StatusCode, typ, param, msg)
			}
			if alloc, limit := after.TotalAlloc-before.TotalAlloc, uint64(len(tc.body)+4<<20); alloc > limit {
				t.Errorf("allocated %d MB to refuse a %d MB body, want at most %d MB", alloc>>20, len(tc.body)>>20, limit>>20)
			}
			if n := tok.encoded.Load(); n != 0 {
				t.Errorf("encoded %d bytes of a prompt its length alone refuses", n)
			}
		})
	}
}

// TestStringSpan: the JSON string a prompt is, or holds as its only element.
func TestStringSpan(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		isOK bool
	}{
		{`"abc"`, 5, true},
		{`""`, 2, true},
		{`["abc"]`, 5, true},
		{"[ \n\"a\\\"b\"\t]", 6, true},
		{`["a\\"]`, 5, true},
		{`["a\\\"b"]`, 8, true},
		{`["a","b"]`, 0, false},
		{`["a\\","b"]`, 0, false},
		{`["a", 1]`, 0, false},
		{`[1]`, 0, false},
		{`[]`, 0, false},
		{`[[1, 2]]`, 0, false},
		{`12`, 0, false},
		{`null`, 0, false},
	} {
		if n, ok := stringSpan([]byte(tc.in)); n != tc.n || ok != tc.isOK {
			t.Errorf("stringSpan(%s) = %d, %v, want %d, %v", tc.in, n, ok, tc.n, tc.isOK)
		}
	}
}

// TestDecodeErrorOrder: a body is decoded once, but its errors are reported as decoding
// the shared sampling fields and then the endpoint's own did: the sampling field's first,
// wherever it stands in the body.
func TestDecodeErrorOrder(t *testing.T) {
	f := start(t, options{})
	for _, tc := range []struct{ path, body, param string }{
		{"/v1/completions", `{"echo": "x", "max_tokens": "y", "prompt": "hi"}`, "max_tokens"},
		{"/v1/completions", `{"best_of": "x", "stop": 3, "prompt": "hi"}`, "stop"},
		{"/v1/completions", `{"echo": "x", "prompt": "hi"}`, "echo"},
		{"/v1/chat/completions", `{"messages": 3, "temperature": "hot"}`, "temperature"},
		{"/v1/chat/completions", `{"messages": [{"role": 1}]}`, "messages.role"},
	} {
		resp, data := f.post(tc.path, tc.body)
		if _, param, _ := errorBody(t, data); resp.StatusCode != http.StatusBadRequest || param != tc.param {
			t.Errorf("%s %s: status %d, param %v, want 400 naming %s: %s", tc.path, tc.body, resp.StatusCode, param, tc.param, data)
		}
	}
}

// TestHeapReturnedWhileLargeBodiesInFlight: the heap huge bodies leave behind is handed
// back to the OS once freeEvery bytes of them were released, also while another large
// body is still in flight (a GC sized from a large live heap would let it pile up).
func TestHeapReturnedWhileLargeBodiesInFlight(t *testing.T) {
	f := start(t, options{server: func(c *Config) { c.freeEvery = 1 << 20; c.MaxTokenizing = 2 }})
	slow := rawRequest(t, f.url, 2<<20) // holds a large-body slot while it sends nothing more
	if _, err := slow.Write([]byte(`{"prompt": "`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the slow body to hold a large-body slot", func() bool { return f.srv.largeActive.Load() == 1 })
	big := `{"prompt": "` + strings.Repeat("x", 2<<20) + `"}`
	for range 2 {
		if resp, data := f.post("/v1/completions", big); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("a large body: status %d: %.200s", resp.StatusCode, data)
		}
	}
	waitFor(t, "the heap to be handed back", func() bool { return f.srv.frees.Load() > 0 })
	if n := f.srv.largeActive.Load(); n != 1 {
		t.Errorf("%d large bodies in flight, want the slow one", n)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
