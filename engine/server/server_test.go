package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"servelab/engine"
	"servelab/policies"
	"servelab/policies/batch"
)

// fakeModel picks the next token from a hash of the whole context read back through the
// block table, so outputs depend on the prompt and paging mistakes show.
type fakeModel struct {
	blockSize int
	delay     time.Duration
	mu        sync.Mutex
	slots     map[[2]int32]int32
	out       [][]float32
}

func (f *fakeModel) Execute(batch []engine.Input) [][]float32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	f.out = f.out[:0]
	for _, in := range batch {
		for i, tok := range in.Tokens {
			p := in.Pos + i
			f.slots[[2]int32{in.Blocks[p/f.blockSize], int32(p % f.blockSize)}] = tok
		}
		if !in.Logits {
			continue
		}
		h := uint32(2166136261)
		for p := range in.Pos + len(in.Tokens) {
			h = (h ^ uint32(f.slots[[2]int32{in.Blocks[p/f.blockSize], int32(p % f.blockSize)}])) * 16777619
		}
		row := make([]float32, 128)
		row['a'+int(h%26)] = 1
		row[' '] = 0.9
		f.out = append(f.out, row)
	}
	return f.out
}

// byteTokenizer: one token per byte; id 2 is EOS, rendered as "</s>".
type byteTokenizer struct{}

func (byteTokenizer) Encode(text string, _ bool) []int32 {
	out := make([]int32, len(text))
	for i := range text {
		out[i] = int32(text[i])
	}
	return out
}

func (byteTokenizer) Decode(ids []int32, _ bool) string {
	b := make([]byte, len(ids))
	for i, id := range ids {
		b[i] = byte(id)
	}
	return string(b)
}

func (byteTokenizer) RenderChat(msgs []Message, gen bool) (string, error) {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "<%s>%s\n", m.Role, m.Content)
	}
	if gen {
		b.WriteString("<assistant>")
	}
	return b.String(), nil
}

type byteDecoder struct{}

func (byteDecoder) Add(id int32) string { return string(rune(id)) }
func (byteDecoder) Flush() string       { return "" }

type fixture struct {
	url    string
	eng    *engine.Engine
	model  *fakeModel
	server *Server
}

func start(t *testing.T, mutate func(*engine.Config, *Config)) *fixture {
	t.Helper()
	bp, _, err := batch.Registry.Parse("vllm:max_num_seqs=4,max_num_batched_tokens=64", policies.Env{})
	if err != nil {
		t.Fatal(err)
	}
	model := &fakeModel{blockSize: 4, slots: map[[2]int32]int32{}}
	reg := prometheus.NewRegistry()
	ecfg := engine.Config{
		ModelName: "fake", Executor: model, NewDecoder: func(bool) engine.TextDecoder { return byteDecoder{} },
		EOS: []int32{2}, MaxModelLen: 256, NumBlocks: 128, BlockSize: 4, EnablePrefixCaching: true,
		Batch: bp, Metrics: engine.NewMetrics(reg, "fake", 256),
	}
	scfg := Config{Tokenizer: byteTokenizer{}, ModelName: "fake", MaxModelLen: 256, Registry: reg}
	if mutate != nil {
		mutate(&ecfg, &scfg)
	}
	eng, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	scfg.Engine = eng
	srv, err := New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	f := &fixture{url: ts.URL, eng: eng, model: model, server: srv}
	t.Cleanup(func() {
		ts.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		eng.Shutdown(ctx)
		waitEmpty(t, eng)
	})
	return f
}

// waitEmpty checks that the block manager is back to empty.
func waitEmpty(t *testing.T, eng *engine.Engine) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := eng.Stats()
		if st.FreeBlocks == st.NumBlocks && st.Running+st.Waiting == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("blocks still held: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
}

func post(t *testing.T, url, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, data
}

// sse reads an SSE body into its data payloads.
func sse(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, line)
		}
	}
	return out
}

func TestCompletionStreamEqualsWhole(t *testing.T) {
	f := start(t, nil)
	resp, body := post(t, f.url+"/v1/completions", `{"model":"fake","prompt":"hello there","max_tokens":12,"temperature":0.8,"seed":7}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var whole struct {
		Object  string
		Choices []struct {
			Text         string
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			PromptTokens        int `json:"prompt_tokens"`
			CompletionTokens    int `json:"completion_tokens"`
			TotalTokens         int `json:"total_tokens"`
			PromptTokensDetails struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		}
	}
	if err := json.Unmarshal(body, &whole); err != nil {
		t.Fatal(err)
	}
	if whole.Object != "text_completion" || len(whole.Choices[0].Text) != 12 || whole.Choices[0].FinishReason != "length" ||
		whole.Usage.PromptTokens != 11 || whole.Usage.CompletionTokens != 12 || whole.Usage.TotalTokens != 23 {
		t.Errorf("response %s", body)
	}
	resp, body = post(t, f.url+"/v1/completions", `{"model":"fake","prompt":"hello there","max_tokens":12,"temperature":0.8,"seed":7,"stream":true,"stream_options":{"include_usage":true}}`)
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("content type %q", ct)
	}
	events := sse(t, strings.NewReader(string(body)))
	if events[len(events)-1] != "[DONE]" {
		t.Fatalf("no [DONE]: %v", events)
	}
	var text string
	var cached int
	for _, ev := range events[:len(events)-1] {
		var c struct {
			Choices []struct{ Text string }
			Usage   *struct {
				PromptTokensDetails struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			}
		}
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			t.Fatal(err)
		}
		for _, ch := range c.Choices {
			text += ch.Text
		}
		if c.Usage != nil {
			cached = c.Usage.PromptTokensDetails.CachedTokens
		}
	}
	if text != whole.Choices[0].Text {
		t.Errorf("streamed %q, whole %q", text, whole.Choices[0].Text)
	}
	// The same prompt again hits the prefix cache: two full blocks of 4 of the 11 tokens.
	if cached != 8 {
		t.Errorf("cached_tokens %d, want 8", cached)
	}
}

func TestChatStream(t *testing.T) {
	f := start(t, nil)
	resp, body := post(t, f.url+"/v1/chat/completions", `{"model":"fake","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":5,"stream":true,"stream_options":{"include_usage":true}}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	events := sse(t, strings.NewReader(string(body)))
	var first, last struct {
		Object  string
		Choices []struct {
			Delta        map[string]string
			FinishReason *string `json:"finish_reason"`
		}
		Usage *struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	json.Unmarshal([]byte(events[0]), &first)
	json.Unmarshal([]byte(events[len(events)-2]), &last)
	if first.Object != "chat.completion.chunk" || first.Choices[0].Delta["role"] != "assistant" {
		t.Errorf("first chunk %s", events[0])
	}
	if last.Usage == nil || last.Usage.CompletionTokens != 5 || len(last.Choices) != 0 {
		t.Errorf("usage chunk %s", events[len(events)-2])
	}
	var finish string
	for _, ev := range events[1 : len(events)-2] {
		var c struct {
			Choices []struct {
				FinishReason *string `json:"finish_reason"`
			}
		}
		json.Unmarshal([]byte(ev), &c)
		if r := c.Choices[0].FinishReason; r != nil {
			finish = *r
		}
	}
	if finish != "length" {
		t.Errorf("finish reason %q in %v", finish, events)
	}
}

func TestErrors(t *testing.T) {
	f := start(t, func(_ *engine.Config, c *Config) { c.APIKey = "" })
	long := strings.Repeat("x", 300)
	tests := []struct {
		name, path, body string
		status           int
		param            any
		msg              string
	}{
		{"malformed JSON", "/v1/completions", `{"prompt": "hi"`, 400, nil, "malformed JSON"},
		{"wrong type", "/v1/completions", `{"prompt": "hi", "max_tokens": "ten"}`, 400, "max_tokens", `field "max_tokens"`},
		{"max_tokens 0", "/v1/completions", `{"prompt": "hi", "max_tokens": 0}`, 400, "max_tokens", "at least 1"},
		{"prompt too long", "/v1/completions", `{"prompt": "` + long + `", "max_tokens": 1}`, 400, "max_tokens", "maximum context length is 256"},
		{"empty prompt", "/v1/completions", `{"prompt": ""}`, 400, "prompt", "empty"},
		{"batched prompts", "/v1/completions", `{"prompt": ["a", "b"]}`, 400, "prompt", "batched"},
		{"n=2", "/v1/completions", `{"prompt": "a", "n": 2}`, 400, "n", "n=1"},
		{"unknown model", "/v1/completions", `{"model": "gpt-9", "prompt": "a"}`, 404, "model", "does not exist"},
		{"no messages", "/v1/chat/completions", `{"messages": []}`, 400, "messages", "empty"},
		{"bad role", "/v1/chat/completions", `{"messages": [{"role": "wizard", "content": "x"}]}`, 400, "messages[0].role", "unknown role"},
		{"bad temperature", "/v1/completions", `{"prompt": "a", "temperature": -1}`, 400, "sampling", "temperature"},
	}
	for _, tc := range tests {
		resp, body := post(t, f.url+tc.path, tc.body)
		var e struct {
			Error struct {
				Message string
				Type    string
				Param   any
				Code    int
			}
		}
		if err := json.Unmarshal(body, &e); err != nil {
			t.Errorf("%s: body %s", tc.name, body)
			continue
		}
		if resp.StatusCode != tc.status || e.Error.Code != tc.status || !cmp.Equal(e.Error.Param, tc.param) || !strings.Contains(e.Error.Message, tc.msg) {
			t.Errorf("%s: status %d, error %+v; want %d, param %v, message with %q", tc.name, resp.StatusCode, e.Error, tc.status, tc.param, tc.msg)
		}
	}
	resp, err := http.Get(f.url + "/v1/completions")
	if err != nil || resp.StatusCode != 405 {
		t.Errorf("GET completions: %v %v", resp.StatusCode, err)
	}
}

func TestAPIKey(t *testing.T) {
	f := start(t, func(_ *engine.Config, c *Config) { c.APIKey = "sekret" })
	resp, _ := post(t, f.url+"/v1/completions", `{"prompt":"a","max_tokens":1}`)
	if resp.StatusCode != 401 {
		t.Errorf("no key: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("POST", f.url+"/v1/completions", strings.NewReader(`{"prompt":"a","max_tokens":1}`))
	req.Header.Set("Authorization", "Bearer sekret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("with key: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if resp, _ := http.Get(f.url + "/health"); resp.StatusCode != 200 {
		t.Errorf("health needs no key, got %d", resp.StatusCode)
	}
}

func TestQueueFull429(t *testing.T) {
	f := start(t, func(e *engine.Config, _ *Config) { e.MaxWaiting, e.NumBlocks = 1, 512 })
	f.model.delay = 5 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// max_num_seqs is 4: four requests run, the fifth waits and fills the queue.
	for i := range 5 {
		req, _ := http.NewRequestWithContext(ctx, "POST", f.url+"/v1/completions", strings.NewReader(`{"prompt":"busy","max_tokens":200,"stream":true,"ignore_eos":true}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v", i, resp.StatusCode, err)
		}
		defer resp.Body.Close()
		if i < 4 {
			// Wait until it runs, so the next one is the one left waiting.
			bufio.NewReader(resp.Body).ReadString('\n')
		}
	}
	t.Logf("before the probe: %+v", f.eng.Stats())
	resp, body := post(t, f.url+"/v1/completions", `{"prompt":"one more","max_tokens":10}`)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "RateLimitError") {
		t.Errorf("got %d %v %s, want a 429 with Retry-After", resp.StatusCode, resp.Header, body)
	}
	cancel()
}

func TestDisconnectFreesBlocks(t *testing.T) {
	f := start(t, nil)
	f.model.delay = 2 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", f.url+"/v1/completions", strings.NewReader(`{"prompt":"a long story","max_tokens":200,"stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(resp.Body)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if st := f.eng.Stats(); st.FreeBlocks == st.NumBlocks {
		t.Fatalf("no block held mid-stream: %+v", st)
	}
	cancel()
	resp.Body.Close()
	waitEmpty(t, f.eng)
}

func TestModelsHealthMetricsEvents(t *testing.T) {
	f := start(t, nil)
	post(t, f.url+"/v1/completions", `{"prompt":"warm the cache up","max_tokens":3}`)
	resp, err := http.Get(f.url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var models struct {
		Data []struct {
			ID          string
			MaxModelLen int `json:"max_model_len"`
		}
	}
	json.NewDecoder(resp.Body).Decode(&models)
	resp.Body.Close()
	if len(models.Data) != 1 || models.Data[0].ID != "fake" || models.Data[0].MaxModelLen != 256 {
		t.Errorf("models %+v", models)
	}
	resp, _ = http.Get(f.url + "/metrics")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
		"vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
		"vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
		`vllm:request_success_total{engine="0",finished_reason="length",model_name="fake"} 1`} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/v1/kv_events", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	var batch struct {
		Seq    int
		Events []struct {
			Type        string
			BlockHashes []uint64 `json:"block_hashes"`
		}
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &batch); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	if batch.Seq != 1 || batch.Events[0].Type != "AllBlocksCleared" || batch.Events[1].Type != "BlockStored" || len(batch.Events[1].BlockHashes) != 4 {
		t.Errorf("snapshot %+v, want the 4 cached blocks of the 17-token prompt", batch)
	}
}

func TestShutdownDrains(t *testing.T) {
	f := start(t, nil)
	f.model.delay = 2 * time.Millisecond
	done := make(chan string)
	go func() {
		_, body := post(t, f.url+"/v1/completions", `{"prompt":"in flight","max_tokens":200,"ignore_eos":true}`)
		done <- string(body)
	}()
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	f.server.Shutdown(ctx)
	if resp, _ := http.Get(f.url + "/health"); resp != nil && resp.StatusCode != 503 {
		t.Errorf("health during shutdown: %d", resp.StatusCode)
	}
	select {
	case body := <-done:
		if !strings.Contains(body, `"finish_reason":"abort"`) && body != "" {
			t.Errorf("in-flight request ended with %s", body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("in-flight request never ended")
	}
	waitEmpty(t, f.eng)
}
