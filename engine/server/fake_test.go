package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/engine"
	"servelab/policies"
	"servelab/policies/batch"
)

// The fake vocabulary has 256 ids, one per byte value; ids 0 and 1 are reserved as the
// special tokens BOS ("<s>") and EOS ("</s>").
const (
	fakeVocab = 256
	bosID     = 0
	eosID     = 1
)

// fakeNext is the fake model: the greedy next token as a function of the whole context.
// A context ending in '!' is answered with EOS; otherwise a hash of the context picks a
// lowercase letter or a space.
func fakeNext(ctx []int32) int32 {
	if ctx[len(ctx)-1] == '!' {
		return eosID
	}
	h := fnv(ctx)
	if c := h % 27; c < 26 {
		return int32('a' + c)
	}
	return ' '
}

func fnv(ctx []int32) uint32 {
	h := uint32(2166136261)
	for _, t := range ctx {
		h = (h ^ uint32(t)) * 16777619
	}
	return h
}

// greedy is what the fake model generates from prompt under greedy decoding: n tokens, or
// fewer when it emits EOS (unless ignoreEOS).
func greedy(prompt []int32, n int, ignoreEOS bool) []int32 {
	ctx := append([]int32(nil), prompt...)
	var out []int32
	for range n {
		tok := fakeNext(ctx)
		out = append(out, tok)
		if tok == eosID && !ignoreEOS {
			break
		}
		ctx = append(ctx, tok)
	}
	return out
}

// fakeExecutor runs the fake model. It writes every computed token into its KV slot and
// reads the whole context back through the block table, so paging, prefix-cache and
// preemption mistakes in the engine change the output. Its logits put the greedy token
// first and spread the rest over the letters and space, so sampling varies with the seed.
type fakeExecutor struct {
	blockSize int
	delay     atomic.Int64 // per step, in nanoseconds

	mu    sync.Mutex
	slots map[[2]int32]int32
	out   [][]float32
}

func (f *fakeExecutor) setDelay(d time.Duration) { f.delay.Store(int64(d)) }

func (f *fakeExecutor) Execute(batch []engine.Input) [][]float32 {
	if d := f.delay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.out = f.out[:0]
	for _, in := range batch {
		for i, tok := range in.Tokens {
			p := in.Pos + i
			f.slots[[2]int32{in.Blocks[p/f.blockSize], int32(p % f.blockSize)}] = tok
		}
		if !in.Logits {
			continue
		}
		ctx := make([]int32, in.Pos+len(in.Tokens))
		for p := range ctx {
			tok, ok := f.slots[[2]int32{in.Blocks[p/f.blockSize], int32(p % f.blockSize)}]
			if !ok {
				panic(fmt.Sprintf("fake executor: position %d read from an unwritten KV slot", p))
			}
			ctx[p] = tok
		}
		row := make([]float32, fakeVocab)
		for i := range row {
			row[i] = -20
		}
		h := fnv(ctx)
		for c := range int32(27) {
			id := 'a' + c
			if c == 26 {
				id = ' '
			}
			row[id] = float32((h>>(c%24))&7) / 8
		}
		row[fakeNext(ctx)] = 2
		f.out = append(f.out, row)
	}
	return f.out
}

// byteTokenizer is the fake tokenizer: a token per byte, BOS first when asked.
type byteTokenizer struct{}

func (byteTokenizer) Encode(text string, addSpecial bool) []int32 {
	var out []int32
	if addSpecial {
		out = append(out, bosID)
	}
	for i := range len(text) {
		out = append(out, int32(text[i]))
	}
	return out
}

func (byteTokenizer) Decode(ids []int32, skipSpecial bool) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(tokenText(id, skipSpecial))
	}
	return b.String()
}

func (byteTokenizer) VocabSize() int { return fakeVocab }

// RenderChat is a plain template without BOS: "<|role|>content\n" per message.
func (byteTokenizer) RenderChat(msgs []Message, gen bool) (string, error) {
	var b strings.Builder
	for _, m := range msgs {
		if m.Content == "FAIL" {
			return "", errors.New("the template refuses this conversation")
		}
		fmt.Fprintf(&b, "<|%s|>%s\n", m.Role, m.Content)
	}
	if gen {
		b.WriteString("<|assistant|>")
	}
	return b.String(), nil
}

func tokenText(id int32, skipSpecial bool) string {
	switch {
	case id == bosID && !skipSpecial:
		return "<s>"
	case id == eosID && !skipSpecial:
		return "</s>"
	case id == bosID || id == eosID:
		return ""
	}
	return string([]byte{byte(id)})
}

// byteDecoder detokenises incrementally, holding bytes until they make whole runes.
type byteDecoder struct {
	skip bool
	buf  []byte
}

func (d *byteDecoder) Add(id int32) string {
	d.buf = append(d.buf, tokenText(id, d.skip)...)
	n := len(d.buf)
	if i := lastRuneStart(d.buf); !utf8.FullRune(d.buf[i:]) {
		n = i // an incomplete rune at the end waits for its next bytes
	}
	out := string(d.buf[:n])
	d.buf = d.buf[n:]
	return out
}

func lastRuneStart(b []byte) int {
	i := len(b) - 1
	for i > 0 && !utf8.RuneStart(b[i]) {
		i--
	}
	return max(i, 0)
}

func (d *byteDecoder) Flush() string {
	out := string(d.buf)
	d.buf = nil
	return out
}

// fixture is a real engine with the fake model behind a Server listening on 127.0.0.1.
type fixture struct {
	t      testing.TB
	url    string
	eng    *engine.Engine
	exec   *fakeExecutor
	srv    *Server
	client *http.Client
}

type options struct {
	engine func(*engine.Config)
	server func(*Config)
}

const testMaxModelLen = 256

func start(t testing.TB, opts options) *fixture {
	t.Helper()
	bp, _, err := batch.Registry.Parse("vllm:max_num_seqs=4,max_num_batched_tokens=64", policies.Env{})
	if err != nil {
		t.Fatal(err)
	}
	exec := &fakeExecutor{blockSize: 4, slots: map[[2]int32]int32{}}
	reg := prometheus.NewRegistry()
	ecfg := engine.Config{
		ModelName: "fake", Executor: exec,
		NewDecoder: func(skip bool) engine.TextDecoder { return &byteDecoder{skip: skip} },
		EOS:        []int32{eosID}, MaxModelLen: testMaxModelLen, NumBlocks: 128, BlockSize: 4,
		EnablePrefixCaching: true, Batch: bp, Metrics: engine.NewMetrics(reg, "fake", testMaxModelLen),
	}
	if opts.engine != nil {
		opts.engine(&ecfg)
	}
	eng, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	scfg := Config{Engine: eng, Tokenizer: byteTokenizer{}, ModelName: "fake", Registry: reg}
	if opts.server != nil {
		opts.server(&scfg)
	}
	srv, err := New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	transport := &http.Transport{}
	f := &fixture{t: t, url: "http://" + ln.Addr().String(), eng: eng, exec: exec, srv: srv, client: &http.Client{Transport: transport}}
	t.Cleanup(func() {
		// Every test must leave the engine idle with every block free on its own...
		waitIdle(t, eng)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		transport.CloseIdleConnections()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		// ...and still after Shutdown.
		waitIdle(t, eng)
	})
	return f
}

// waitIdle waits until the engine runs nothing and the block manager is back to empty.
func waitIdle(t testing.TB, eng *engine.Engine) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := eng.Stats()
		if st.FreeBlocks == st.NumBlocks && st.Running+st.Waiting == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine still holds requests or blocks: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
}

// do sends a request and reads the whole response.
func (f *fixture) do(method, path, body string, header ...string) (*http.Response, []byte) {
	f.t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := f.client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp, data
}

func (f *fixture) post(path, body string) (*http.Response, []byte) {
	f.t.Helper()
	return f.do(http.MethodPost, path, body)
}

// openStream starts a streaming request and returns its response, whose body the caller
// reads and closes.
func (f *fixture) openStream(ctx context.Context, path, body string) *http.Response {
	f.t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.url+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		f.t.Fatalf("status %d: %s", resp.StatusCode, data)
	}
	return resp
}

// sseEvents splits an SSE body into its data payloads; done reports a final [DONE].
func sseEvents(t testing.TB, body []byte) (events []string, done bool) {
	t.Helper()
	if len(body) > 0 && !strings.HasSuffix(string(body), "\n\n") {
		t.Errorf("SSE body does not end with a blank line: %q", body)
	}
	for _, msg := range strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n") {
		data, ok := strings.CutPrefix(msg, "data: ")
		if !ok || strings.Contains(data, "\n") {
			t.Errorf("malformed SSE message %q", msg)
			continue
		}
		if done {
			t.Errorf("data after [DONE]: %q", data)
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		events = append(events, data)
	}
	return events, done
}

// readEvent reads one SSE data payload from r.
func readEvent(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if _, err := r.ReadString('\n'); err != nil {
		return "", err
	}
	data, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "data: ")
	if !ok {
		return "", fmt.Errorf("not an SSE data line: %q", line)
	}
	return data, nil
}

func ids(s string) []int32 { return byteTokenizer{}.Encode(s, false) }

func text(ids []int32) string { return byteTokenizer{}.Decode(ids, true) }

func ptr[T any](v T) *T { return &v }
