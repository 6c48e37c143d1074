package server

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/engine"
)

// kvFake gives the fake executor engine.KVBlockIO: a block's contents are the tokens in its
// slots, -1 for a slot never written. The fake executor panics when it reads an unwritten
// slot, so a decode engine whose pulled blocks did not land fails loudly, and one whose
// blocks landed wrong generates other text.
type kvFake struct{ *fakeExecutor }

func (k kvFake) BlockBytes() int { return 4 * k.blockSize }

func (k kvFake) ReadBlock(b int32, dst []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := range k.blockSize {
		tok, ok := k.slots[[2]int32{b, int32(i)}]
		if !ok {
			tok = -1
		}
		binary.LittleEndian.PutUint32(dst[4*i:], uint32(tok))
	}
}

func (k kvFake) WriteBlock(b int32, src []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := range k.blockSize {
		if tok := int32(binary.LittleEndian.Uint32(src[4*i:])); tok >= 0 {
			k.slots[[2]int32{b, int32(i)}] = tok
		} else {
			delete(k.slots, [2]int32{b, int32(i)})
		}
	}
}

// startPD starts a fake engine with KV transfer in the given role.
func startPD(t *testing.T, role string, opts options) *fixture {
	t.Helper()
	eng, srv := opts.engine, opts.server
	opts.engine = func(c *engine.Config) {
		c.Executor = kvFake{c.Executor.(*fakeExecutor)}
		if eng != nil {
			eng(c)
		}
	}
	opts.server = func(c *Config) {
		c.KVTransfer.Role = role
		if srv != nil {
			srv(c)
		}
	}
	return start(t, opts)
}

// prefillParams is what a router sends a prefill engine (llm-d's sidecar).
const prefillParams = `"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`

type wireKV struct {
	DoRemotePrefill bool    `json:"do_remote_prefill"`
	DoRemoteDecode  bool    `json:"do_remote_decode"`
	RemoteEngineID  string  `json:"remote_engine_id"`
	RemoteRequestID string  `json:"remote_request_id"`
	RemoteBlockIDs  []int32 `json:"remote_block_ids"`
	RemoteHost      string  `json:"remote_host"`
	RemotePort      int     `json:"remote_port"`
	TPSize          int     `json:"tp_size"`
}

type wireCompletion struct {
	Choices []struct {
		Text         string  `json:"text"`
		FinishReason string  `json:"finish_reason"`
		TokenIDs     []int32 `json:"token_ids"`
	} `json:"choices"`
	KVTransferParams json.RawMessage `json:"kv_transfer_params"`
}

// prefill runs the prefill leg of prompt on p and returns the raw kv_transfer_params.
func prefill(t *testing.T, p *fixture, prompt string) json.RawMessage {
	t.Helper()
	resp, data := p.post("/v1/completions", fmt.Sprintf(`{"prompt":%q,"max_tokens":1,"temperature":0,%s}`, prompt, prefillParams))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("prefill: %d %s", resp.StatusCode, data)
	}
	var c wireCompletion
	if err := json.Unmarshal(data, &c); err != nil || len(c.KVTransferParams) == 0 || string(c.KVTransferParams) == "null" {
		t.Fatalf("prefill response without kv_transfer_params (%v): %s", err, data)
	}
	return c.KVTransferParams
}

func heldBlocks(eng *engine.Engine) int { return eng.Stats().KVHeldBlocks }

// TestKVTransferRoundTrip: a decode engine continuing from a prefill engine's KV generates
// what one engine generates from the whole prompt, streamed or not, for completions and
// chat; both sides' blocks come free.
func TestKVTransferRoundTrip(t *testing.T) {
	p := startPD(t, "prefill", options{})
	d := startPD(t, "decode", options{})
	prompt := "the quick brown fox jumps over the lazy dog" // 44 tokens with BOS: 11 full blocks
	want := text(greedy(append([]int32{bosID}, ids(prompt)...), 12, false))
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%t", stream), func(t *testing.T) {
			params := prefill(t, p, prompt)
			var kv wireKV
			if err := json.Unmarshal(params, &kv); err != nil {
				t.Fatal(err)
			}
			_, port, _ := net.SplitHostPort(strings.TrimPrefix(p.url, "http://"))
			if kv.RemoteHost != "127.0.0.1" || fmt.Sprint(kv.RemotePort) != port || !kv.DoRemotePrefill || kv.DoRemoteDecode ||
				kv.TPSize != 1 || len(kv.RemoteBlockIDs) != 11 || kv.RemoteEngineID != p.srv.cfg.KVTransfer.EngineID || kv.RemoteRequestID == "" {
				t.Fatalf("kv_transfer_params %s (engine %s, port %s)", params, p.srv.cfg.KVTransfer.EngineID, port)
			}
			if got := heldBlocks(p.eng); got != 11 {
				t.Fatalf("prefill engine holds %d blocks, want 11", got)
			}
			body := fmt.Sprintf(`{"prompt":%q,"max_tokens":12,"temperature":0,"stream":%t,"kv_transfer_params":%s}`, prompt, stream, params)
			resp, data := d.post("/v1/completions", body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("decode: %d %s", resp.StatusCode, data)
			}
			got := completionText(t, data, stream)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("decode after remote prefill (-one engine +disaggregated):\n%s", diff)
			}
			waitFor(t, "the prefill engine to free the pulled blocks", func() bool { return heldBlocks(p.eng) == 0 })
			waitIdle(t, p.eng)
			waitIdle(t, d.eng)
		})
	}
	t.Run("chat", func(t *testing.T) {
		msgs := `"messages":[{"role":"user","content":"tell me about the lazy dog and the quick fox"}],"temperature":0`
		resp, data := p.post("/v1/chat/completions", `{`+msgs+`,"max_tokens":1,`+prefillParams+`}`)
		var c wireCompletion
		if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &c) != nil {
			t.Fatalf("chat prefill: %d %s", resp.StatusCode, data)
		}
		resp, data = d.post("/v1/chat/completions", `{`+msgs+`,"max_tokens":10,"kv_transfer_params":`+string(c.KVTransferParams)+`}`)
		_, ref := p.post("/v1/chat/completions", `{`+msgs+`,"max_tokens":10}`)
		var got, one struct {
			Choices []struct{ Message struct{ Content string } }
		}
		json.Unmarshal(data, &got)
		json.Unmarshal(ref, &one)
		if resp.StatusCode != http.StatusOK || len(got.Choices) != 1 || len(one.Choices) != 1 || got.Choices[0].Message.Content != one.Choices[0].Message.Content {
			t.Fatalf("chat decode %d %s, one engine %s", resp.StatusCode, data, ref)
		}
	})
}

// TestKVTransferBothRole: a both engine serves both legs, pulling from itself.
func TestKVTransferBothRole(t *testing.T) {
	b := startPD(t, "", options{})
	prompt := "the quick brown fox jumps over the lazy dog"
	params := prefill(t, b, prompt)
	resp, data := b.post("/v1/completions", fmt.Sprintf(`{"prompt":%q,"max_tokens":12,"temperature":0,"kv_transfer_params":%s}`, prompt, params))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("decode: %d %s", resp.StatusCode, data)
	}
	if got, want := completionText(t, data, false), text(greedy(append([]int32{bosID}, ids(prompt)...), 12, false)); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	waitFor(t, "the hold freed", func() bool { return heldBlocks(b.eng) == 0 })
}

// TestKVTransferWaitsForBlocks: a remote prefill arriving while the decode engine's blocks
// are taken waits for them, then pulls and generates as usual.
func TestKVTransferWaitsForBlocks(t *testing.T) {
	p := startPD(t, "prefill", options{})
	d := startPD(t, "decode", options{engine: func(c *engine.Config) { c.NumBlocks = 70 }})
	prompt := "the quick brown fox jumps over the lazy dog" // 11 full blocks
	params := prefill(t, p, prompt)
	d.exec.setDelay(5 * time.Millisecond)
	long := strings.Repeat("a long prompt that fills the cache ", 6)[:199] // 200 tokens with BOS
	done := make(chan int, 1)
	go func() {
		resp, err := http.Post(d.url+"/v1/completions", "application/json",
			strings.NewReader(fmt.Sprintf(`{"prompt":%q,"max_tokens":40,"ignore_eos":true}`, long)))
		if err != nil {
			done <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	waitFor(t, "the long request to hold its blocks", func() bool { st := d.eng.Stats(); return st.NumBlocks-st.FreeBlocks > 59 })
	resp, data := d.post("/v1/completions", fmt.Sprintf(`{"prompt":%q,"max_tokens":12,"temperature":0,"kv_transfer_params":%s}`, prompt, params))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("decode: %d %s", resp.StatusCode, data)
	}
	if got, want := completionText(t, data, false), text(greedy(append([]int32{bosID}, ids(prompt)...), 12, false)); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if code := <-done; code != http.StatusOK {
		t.Fatalf("the long request: %d", code)
	}
	d.exec.setDelay(0)
}

// completionText reads a completion's text, whole or streamed.
func completionText(t *testing.T, data []byte, stream bool) string {
	t.Helper()
	if !stream {
		var c wireCompletion
		if err := json.Unmarshal(data, &c); err != nil || len(c.Choices) != 1 {
			t.Fatalf("response %s", data)
		}
		return c.Choices[0].Text
	}
	events, done := sseEvents(t, data)
	if !done {
		t.Fatalf("stream without [DONE]: %s", data)
	}
	var out strings.Builder
	for _, ev := range events {
		var c wireCompletion
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			t.Fatalf("event %s: %v", ev, err)
		}
		for _, ch := range c.Choices {
			out.WriteString(ch.Text)
		}
	}
	return out.String()
}

// TestKVTransferParamsHostile: malformed kv_transfer_params are 400s naming the field, and
// nothing is allocated for them.
func TestKVTransferParamsHostile(t *testing.T) {
	p := startPD(t, "prefill", options{})
	d := startPD(t, "decode", options{})
	prompt := "0123456789abcdef" // 17 tokens with BOS: 4 full blocks
	remote := func(over string) string {
		fields := map[string]string{
			"do_remote_prefill": "true", "remote_engine_id": `"e"`, "remote_request_id": `"r"`,
			"remote_block_ids": "[1,2,3,4]", "remote_host": `"127.0.0.1"`, "remote_port": "9",
		}
		var b strings.Builder
		b.WriteString("{")
		for _, k := range []string{"do_remote_prefill", "remote_engine_id", "remote_request_id", "remote_block_ids", "remote_host", "remote_port"} {
			if v, ok := fields[k]; ok && !strings.Contains(over, `"`+k+`"`) {
				fmt.Fprintf(&b, "%q:%s,", k, v)
			}
		}
		b.WriteString(over)
		return strings.TrimSuffix(b.String(), ",") + "}"
	}
	many := "[" + strings.TrimSuffix(strings.Repeat("1,", 100000), ",") + "]"
	for _, tc := range []struct {
		name   string
		f      *fixture
		params string
		extra  string
		param  string
	}{
		{"not an object", d, `"yes"`, "", "kv_transfer_params"},
		{"list", d, `[1]`, "", "kv_transfer_params"},
		{"flag type", d, `{"do_remote_prefill":"true"}`, "", "kv_transfer_params.do_remote_prefill"},
		{"both flags", p, `{"do_remote_prefill":true,"do_remote_decode":true}`, "", "kv_transfer_params"},
		{"decode role refuses a prefill", d, `{"do_remote_decode":true}`, "", "kv_transfer_params.do_remote_decode"},
		{"prefill role refuses a decode", p, remote(""), "", "kv_transfer_params.do_remote_prefill"},
		{"streamed prefill", p, `{"do_remote_decode":true}`, `,"stream":true`, "stream"},
		{"engine id missing", d, remote(`"remote_engine_id":null`), "", "kv_transfer_params.remote_engine_id"},
		{"engine id type", d, remote(`"remote_engine_id":7`), "", "kv_transfer_params.remote_engine_id"},
		{"engine id too long", d, remote(`"remote_engine_id":"` + strings.Repeat("e", 300) + `"`), "", "kv_transfer_params.remote_engine_id"},
		{"request id missing", d, remote(`"remote_request_id":""`), "", "kv_transfer_params.remote_request_id"},
		{"block ids missing", d, remote(`"remote_block_ids":null`), "", "kv_transfer_params.remote_block_ids"},
		{"block ids type", d, remote(`"remote_block_ids":"1,2"`), "", "kv_transfer_params.remote_block_ids"},
		{"negative block id", d, remote(`"remote_block_ids":[1,-2,3,4]`), "", "kv_transfer_params.remote_block_ids"},
		{"huge block id", d, remote(`"remote_block_ids":[1,2,3,4294967296]`), "", "kv_transfer_params.remote_block_ids"},
		{"fractional block id", d, remote(`"remote_block_ids":[1,2,3,4.5]`), "", "kv_transfer_params.remote_block_ids"},
		{"too many block ids", d, remote(`"remote_block_ids":` + many), "", "kv_transfer_params.remote_block_ids"},
		{"fewer block ids than full blocks", d, remote(`"remote_block_ids":[1,2,3]`), "", "kv_transfer_params.remote_block_ids"},
		{"more block ids than full blocks", d, remote(`"remote_block_ids":[1,2,3,4,5]`), "", "kv_transfer_params.remote_block_ids"},
		{"host not loopback", d, remote(`"remote_host":"10.0.0.1"`), "", "kv_transfer_params.remote_host"},
		{"host name", d, remote(`"remote_host":"evil.example"`), "", "kv_transfer_params.remote_host"},
		{"port zero", d, remote(`"remote_port":0`), "", "kv_transfer_params.remote_port"},
		{"port too large", d, remote(`"remote_port":70000`), "", "kv_transfer_params.remote_port"},
		{"port string", d, remote(`"remote_port":"80"`), "", "kv_transfer_params.remote_port"},
		{"tp_size", d, remote(`"tp_size":2`), "", "kv_transfer_params.tp_size"},
		{"malformed unknown field", d, `{"x":[1,}`, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := fmt.Sprintf(`{"prompt":%q,"max_tokens":4,"kv_transfer_params":%s%s}`, prompt, tc.params, tc.extra)
			resp, data := tc.f.post("/v1/completions", body)
			var e wireError
			json.Unmarshal(data, &e)
			if resp.StatusCode != http.StatusBadRequest || e.Error == nil {
				t.Fatalf("%d %s", resp.StatusCode, data)
			}
			if tc.param != "" && e.Error.Param != tc.param {
				t.Errorf("param %v, want %s (%s)", e.Error.Param, tc.param, e.Error.Message)
			}
		})
	}
	// A host on the allow list passes validation: the pull is tried (here dialled to a
	// closed loopback port) and fails with a 503, not a 400.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	a := startPD(t, "decode", options{server: func(c *Config) {
		c.KVTransfer.AllowHosts = []string{"prefill.internal"}
		c.KVTransfer.Client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != "prefill.internal:9" {
				return nil, fmt.Errorf("dialled %s", addr)
			}
			return (&net.Dialer{}).DialContext(ctx, network, closed)
		}}}
	}})
	resp, data := a.post("/v1/completions", fmt.Sprintf(`{"prompt":%q,"max_tokens":4,"kv_transfer_params":%s}`, prompt, remote(`"remote_host":"prefill.internal"`)))
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(data), "connection refused") {
		t.Fatalf("pull from an allowed host: %d %s", resp.StatusCode, data)
	}
}

// TestKVPullEndpoint: the prefill engine checks what a pull names.
func TestKVPullEndpoint(t *testing.T) {
	p := startPD(t, "prefill", options{})
	var kv wireKV
	json.Unmarshal(prefill(t, p, "0123456789abcdef"), &kv)
	pull := func(engineID, requestID string, blocks []int32) (*http.Response, []byte) {
		b, _ := json.Marshal(map[string]any{"remote_engine_id": engineID, "remote_request_id": requestID, "remote_block_ids": blocks})
		return p.post("/v1/kv_transfer/pull", string(b))
	}
	for _, tc := range []struct {
		name      string
		engine    string
		request   string
		blocks    []int32
		status    int
		wantParam string
	}{
		{"other engine", "servelab-other", kv.RemoteRequestID, kv.RemoteBlockIDs, http.StatusNotFound, "remote_engine_id"},
		{"unknown request", kv.RemoteEngineID, "cmpl-nope", kv.RemoteBlockIDs, http.StatusNotFound, "remote_request_id"},
		{"other blocks", kv.RemoteEngineID, kv.RemoteRequestID, kv.RemoteBlockIDs[1:], http.StatusConflict, "remote_block_ids"},
	} {
		resp, data := pull(tc.engine, tc.request, tc.blocks)
		var e wireError
		json.Unmarshal(data, &e)
		if resp.StatusCode != tc.status || e.Error == nil || e.Error.Param != tc.wantParam {
			t.Errorf("%s: %d %s", tc.name, resp.StatusCode, data)
		}
	}
	if got := heldBlocks(p.eng); got != 4 {
		t.Fatalf("refused pulls changed the hold: %d blocks held", got)
	}
	resp, data := pull(kv.RemoteEngineID, kv.RemoteRequestID, kv.RemoteBlockIDs)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/octet-stream" || len(data) != 4*16 {
		t.Fatalf("pull: %d %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(data))
	}
	// Block 0 holds BOS and the first three prompt bytes.
	if got := int32(binary.LittleEndian.Uint32(data[4:])); got != '0' {
		t.Errorf("block 0, slot 1 holds token %d, want %d", got, '0')
	}
	waitFor(t, "the pulled blocks freed", func() bool { return heldBlocks(p.eng) == 0 })
	if resp, _ := pull(kv.RemoteEngineID, kv.RemoteRequestID, kv.RemoteBlockIDs); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a second pull: %d, want 404", resp.StatusCode)
	}
}

// TestKVTransferFaults: a transfer that fails midway, a pull that cannot connect, and a
// hold nobody claims all end with every block free on both sides.
func TestKVTransferFaults(t *testing.T) {
	prompt := "the quick brown fox jumps over the lazy dog"
	t.Run("prefill vanishes mid-transfer", func(t *testing.T) {
		paused := make(chan string, 1)
		p := startPD(t, "prefill", options{server: func(c *Config) {
			c.KVTransfer.PauseAfterBlocks = 3
			c.KVTransfer.OnPause = func(id string, _, _ int) { paused <- id }
		}})
		d := startPD(t, "decode", options{})
		params := prefill(t, p, prompt)
		type result struct {
			resp *http.Response
			data []byte
		}
		done := make(chan result, 1)
		go func() {
			resp, err := http.Post(d.url+"/v1/completions", "application/json",
				strings.NewReader(fmt.Sprintf(`{"prompt":%q,"max_tokens":4,"stream":true,"kv_transfer_params":%s}`, prompt, params)))
			if err != nil {
				done <- result{}
				return
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			done <- result{resp, data}
		}()
		<-paused
		if st := d.eng.Stats(); st.FreeBlocks != st.NumBlocks-11 {
			t.Errorf("mid-pull the decode engine has %d of %d blocks free, want 11 taken", st.FreeBlocks, st.NumBlocks)
		}
		// The prefill engine's connections are cut, as its process dying would.
		p.srv.http.Close()
		r := <-done
		if r.resp == nil || r.resp.StatusCode != http.StatusServiceUnavailable || r.resp.Header.Get(RetryHeader) != "kv-pull" ||
			!strings.Contains(string(r.data), "the remote prefill's KV could not be fetched") {
			t.Fatalf("decode after a cut transfer: %+v %s", r.resp, r.data)
		}
		waitIdle(t, d.eng)
		waitFor(t, "the prefill engine to free the blocks of the failed pull", func() bool { return heldBlocks(p.eng) == 0 })
		waitIdle(t, p.eng)
	})
	t.Run("nobody serves the pull", func(t *testing.T) {
		d := startPD(t, "decode", options{})
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		params := fmt.Sprintf(`{"do_remote_prefill":true,"remote_engine_id":"e","remote_request_id":"r","remote_block_ids":[5,6,7,8,9,10,11,12,13,14,15],"remote_host":"127.0.0.1","remote_port":%d}`, port)
		resp, data := d.post("/v1/completions", fmt.Sprintf(`{"prompt":%q,"max_tokens":4,"kv_transfer_params":%s}`, prompt, params))
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(RetryHeader) != "kv-pull" {
			t.Fatalf("%d %s", resp.StatusCode, data)
		}
		waitIdle(t, d.eng)
	})
	t.Run("hold expires", func(t *testing.T) {
		p := startPD(t, "prefill", options{engine: func(c *engine.Config) { c.KVTransferTimeout = 50 * time.Millisecond }})
		prefill(t, p, prompt)
		waitFor(t, "the unclaimed hold to expire", func() bool { return heldBlocks(p.eng) == 0 })
		waitIdle(t, p.eng)
	})
	t.Run("prefill client gone", func(t *testing.T) {
		// The prompt's blocks are held after its step; the client leaves during the
		// next ones.
		p := startPD(t, "prefill", options{})
		p.exec.setDelay(100 * time.Millisecond)
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.url+"/v1/completions",
			strings.NewReader(fmt.Sprintf(`{"prompt":%q,"max_tokens":5,%s}`, prompt, prefillParams)))
		go func() {
			for deadline := time.Now().Add(10 * time.Second); p.eng.Stats().Running == 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			cancel()
		}()
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
		p.exec.setDelay(0)
		waitFor(t, "no hold left", func() bool { return heldBlocks(p.eng) == 0 })
		waitIdle(t, p.eng)
	})
}
