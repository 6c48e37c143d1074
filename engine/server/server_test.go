package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/engine"
	"servelab/engine/sampling"
	"servelab/serving"
)

// Wire types, decoded independently of the server's own.
type wireUsage struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	TotalTokens         int `json:"total_tokens"`
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

type wireChoice struct {
	Index   int     `json:"index"`
	Text    *string `json:"text"`
	Message *struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"message"`
	Delta        map[string]any `json:"delta"`
	FinishReason *string        `json:"finish_reason"`
	StopReason   any            `json:"stop_reason"`
}

type wireResponse struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []wireChoice `json:"choices"`
	Usage   *wireUsage   `json:"usage"`
}

// result is what a client makes of a response, streamed or not.
type result struct {
	Text         string
	FinishReason string
	StopReason   any
	Usage        wireUsage
}

func usageOfCounts(prompt, completion int) wireUsage {
	return wireUsage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
}

// ignoreCached leaves prompt_tokens_details out of comparisons: a repeated prompt hits the
// prefix cache.
var ignoreCached = cmpopts.IgnoreFields(wireUsage{}, "PromptTokensDetails")

// whole sends a non-streamed request and checks the response's shape.
func (f *fixture) whole(path, body string) result {
	f.t.Helper()
	resp, data := f.post(path, body)
	if resp.StatusCode != http.StatusOK {
		f.t.Fatalf("%s: status %d: %s", body, resp.StatusCode, data)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		f.t.Errorf("Content-Type %q", ct)
	}
	chat := strings.Contains(path, "chat")
	// The keys OpenAI clients expect, nulls included.
	var raw struct {
		Choices []map[string]json.RawMessage `json:"choices"`
	}
	if err := json.Unmarshal(data, &raw); err != nil || len(raw.Choices) != 1 {
		f.t.Fatalf("%s: %v", data, err)
	}
	wantKeys := []string{"finish_reason", "index", "logprobs", "stop_reason", "text"}
	if chat {
		wantKeys = []string{"finish_reason", "index", "logprobs", "message", "stop_reason"}
	}
	if diff := cmp.Diff(wantKeys, slices.Sorted(mapKeys(raw.Choices[0]))); diff != "" {
		f.t.Errorf("choice keys (-want +got):\n%s", diff)
	}
	var r wireResponse
	if err := json.Unmarshal(data, &r); err != nil {
		f.t.Fatal(err)
	}
	wantObject, wantPrefix := "text_completion", "cmpl-"
	if chat {
		wantObject, wantPrefix = "chat.completion", "chatcmpl-"
	}
	if r.Object != wantObject || !strings.HasPrefix(r.ID, wantPrefix) || r.Model != "fake" || r.Created == 0 || r.Usage == nil {
		f.t.Errorf("response %s", data)
	}
	c := r.Choices[0]
	out := result{StopReason: c.StopReason, Usage: *r.Usage}
	if c.FinishReason != nil {
		out.FinishReason = *c.FinishReason
	}
	switch {
	case chat && c.Message != nil && c.Message.Role == "assistant":
		out.Text = c.Message.Content
	case !chat && c.Text != nil:
		out.Text = *c.Text
	default:
		f.t.Errorf("choice %s", data)
	}
	return out
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// streamed sends body with "stream": true and include_usage, and checks the chunks'
// sequence: for chat a first chunk with the assistant role, text chunks without a
// finish_reason, one chunk with the finish_reason and no text, the usage chunk with no
// choices, then [DONE].
func (f *fixture) streamed(path, body string) result {
	f.t.Helper()
	r, _ := f.streamedChunks(path, body)
	return r
}

// streamedChunks is streamed that also counts the content chunks: one per generated token
// (its text possibly empty while held back), as vLLM streams, so their count is the usage's
// completion_tokens; a completion's echo comes in one more.
func (f *fixture) streamedChunks(path, body string) (result, int) {
	f.t.Helper()
	chunks := 0
	body = strings.Replace(body, "{", `{"stream":true,"stream_options":{"include_usage":true},`, 1)
	resp, data := f.post(path, body)
	if resp.StatusCode != http.StatusOK {
		f.t.Fatalf("%s: status %d: %s", body, resp.StatusCode, data)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		f.t.Errorf("Content-Type %q", ct)
	}
	chat := strings.Contains(path, "chat")
	events, done := sseEvents(f.t, data)
	if !done {
		f.t.Errorf("no [DONE] in %q", data)
	}
	var out result
	var id string
	finished, usage := false, false
	for i, ev := range events {
		var c wireResponse
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			f.t.Fatalf("chunk %q: %v", ev, err)
		}
		wantObject := "text_completion"
		if chat {
			wantObject = "chat.completion.chunk"
		}
		if i == 0 {
			id = c.ID
		}
		if c.ID != id || c.Object != wantObject || c.Model != "fake" {
			f.t.Errorf("chunk %d: %s", i, ev)
		}
		if usage {
			f.t.Errorf("chunk after the usage chunk: %s", ev)
		}
		if len(c.Choices) == 0 {
			if c.Usage == nil {
				f.t.Errorf("chunk without choices or usage: %s", ev)
			} else {
				out.Usage, usage = *c.Usage, true
			}
			continue
		}
		if c.Usage != nil {
			f.t.Errorf("usage on a choice chunk: %s", ev)
		}
		ch := c.Choices[0]
		if finished {
			f.t.Errorf("choice chunk after the finish: %s", ev)
		}
		var piece string
		switch {
		case chat && i == 0:
			if diff := cmp.Diff(map[string]any{"role": "assistant", "content": ""}, ch.Delta); diff != "" {
				f.t.Errorf("first chat chunk (-want +got):\n%s", diff)
			}
		case chat:
			if len(ch.Delta) > 1 || len(ch.Delta) == 1 && ch.Delta["content"] == nil {
				f.t.Errorf("delta %v", ch.Delta)
			}
			piece, _ = ch.Delta["content"].(string)
		case ch.Text == nil:
			f.t.Errorf("completion chunk without text: %s", ev)
		default:
			piece = *ch.Text
		}
		out.Text += piece
		if ch.FinishReason != nil {
			finished = true
			out.FinishReason, out.StopReason = *ch.FinishReason, ch.StopReason
			if piece != "" {
				f.t.Errorf("text on the finish chunk: %s", ev)
			}
		} else if !(chat && i == 0) {
			chunks++
		}
	}
	if !finished || !usage {
		f.t.Errorf("finish chunk %v, usage chunk %v in %q", finished, usage, data)
	}
	tokens := chunks
	if strings.Contains(body, `"echo":true`) {
		tokens--
	}
	if tokens != out.Usage.CompletionTokens {
		f.t.Errorf("%d content chunks for %d completion tokens, want one per token", tokens, out.Usage.CompletionTokens)
	}
	return out, chunks
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestCompletions(t *testing.T) {
	f := start(t, options{})
	hello := append([]int32{bosID}, ids("hello there")...)
	gen := greedy(hello, 20, false)
	genText := text(gen)
	stop := genText[6:8]
	cut := strings.Index(genText, stop)
	stopTok := gen[5]
	stopAt := slices.Index(gen, stopTok)
	wow := append([]int32{bosID}, ids("wow!")...)
	wowGen := greedy(wow, 5, true)
	long := strings.Repeat("x", testMaxModelLen-6) // 251 tokens with BOS: 5 left
	longGen := greedy(append([]int32{bosID}, ids(long)...), 5, false)
	tests := []struct {
		name, body string
		want       result
	}{
		{"greedy", `{"model":"fake","prompt":"hello there","max_tokens":12,"temperature":0}`,
			result{Text: text(gen[:12]), FinishReason: "length", Usage: usageOfCounts(12, 12)}},
		{"model omitted, top_k 1 is greedy", `{"prompt":"hello there","max_tokens":12,"top_k":1}`,
			result{Text: text(gen[:12]), FinishReason: "length", Usage: usageOfCounts(12, 12)}},
		{"token ids", `{"prompt":` + mustJSON(hello) + `,"max_tokens":12,"temperature":0}`,
			result{Text: text(gen[:12]), FinishReason: "length", Usage: usageOfCounts(12, 12)}},
		{"a list of one prompt", `{"prompt":["hello there"],"max_tokens":12,"temperature":0}`,
			result{Text: text(gen[:12]), FinishReason: "length", Usage: usageOfCounts(12, 12)}},
		{"a list of one token list", `{"prompt":[` + mustJSON(hello) + `],"max_tokens":12,"temperature":0}`,
			result{Text: text(gen[:12]), FinishReason: "length", Usage: usageOfCounts(12, 12)}},
		{"echo", `{"prompt":"hello there","max_tokens":4,"temperature":0,"echo":true}`,
			result{Text: "hello there" + text(gen[:4]), FinishReason: "length", Usage: usageOfCounts(12, 4)}},
		{"null stop and unknown fields", `{"prompt":"hello there","max_tokens":12,"temperature":0,"stop":null,"user":"u1","frobnicate":{"x":[1]}}`,
			result{Text: text(gen[:12]), FinishReason: "length", Usage: usageOfCounts(12, 12)}},
		{"stop string", `{"prompt":"hello there","max_tokens":20,"temperature":0,"stop":["zzzz",` + mustJSON(stop) + `]}`,
			result{Text: genText[:cut], FinishReason: "stop", StopReason: stop, Usage: usageOfCounts(12, cut+len(stop))}},
		{"stop token id", `{"prompt":"hello there","max_tokens":20,"temperature":0,"stop_token_ids":[` + fmt.Sprint(stopTok) + `]}`,
			result{Text: text(gen[:stopAt]), FinishReason: "stop", StopReason: float64(stopTok), Usage: usageOfCounts(12, stopAt+1)}},
		{"EOS", `{"prompt":"wow!","max_tokens":5,"temperature":0}`,
			result{Text: "", FinishReason: "stop", Usage: usageOfCounts(5, 1)}},
		{"ignore_eos", `{"prompt":"wow!","max_tokens":5,"temperature":0,"ignore_eos":true}`,
			result{Text: text(wowGen), FinishReason: "length", Usage: usageOfCounts(5, 5)}},
		{"min_tokens holds EOS back", `{"prompt":"wow!","max_tokens":5,"temperature":0,"min_tokens":2}`,
			result{Text: text(wowGen), FinishReason: "length", Usage: usageOfCounts(5, 5)}},
		{"special tokens shown", `{"prompt":"wow!","max_tokens":3,"temperature":0,"ignore_eos":true,"skip_special_tokens":false}`,
			result{Text: "</s>" + text(wowGen[1:3]), FinishReason: "length", Usage: usageOfCounts(5, 3)}},
		{"max_tokens all the context leaves", `{"prompt":"` + long + `","max_tokens":5,"temperature":0}`,
			result{Text: text(longGen), FinishReason: "length", Usage: usageOfCounts(251, 5)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			whole := f.whole("/v1/completions", tc.body)
			if diff := cmp.Diff(tc.want, whole, ignoreCached); diff != "" {
				t.Errorf("whole (-want +got):\n%s", diff)
			}
			streamed := f.streamed("/v1/completions", tc.body)
			if diff := cmp.Diff(whole, streamed, ignoreCached); diff != "" {
				t.Errorf("streamed differs from whole (-whole +streamed):\n%s", diff)
			}
		})
	}
}

func TestPrefixCacheUsage(t *testing.T) {
	f := start(t, options{})
	body := `{"prompt":"hello there","max_tokens":3,"temperature":0}`
	first := f.whole("/v1/completions", body)
	second := f.streamed("/v1/completions", body)
	// 12 prompt tokens in blocks of 4: the last token is always computed, so two blocks hit.
	if first.Usage.PromptTokensDetails.CachedTokens != 0 || second.Usage.PromptTokensDetails.CachedTokens != 8 {
		t.Errorf("cached_tokens %d then %d, want 0 then 8", first.Usage.PromptTokensDetails.CachedTokens, second.Usage.PromptTokensDetails.CachedTokens)
	}
}

func TestChatCompletions(t *testing.T) {
	f := start(t, options{})
	prompt := func(msgs ...Message) []int32 {
		s, _ := byteTokenizer{}.RenderChat(msgs, true)
		return ids(s) // no BOS: templates write their own
	}
	hi := prompt(Message{"user", "hi"})
	sys := prompt(Message{"system", "be brief"}, Message{"user", "hi"}, Message{"assistant", "hello"}, Message{"user", "more"})
	gen := greedy(hi, 10, false)
	sysGen := greedy(sys, 6, false)
	tests := []struct {
		name, body string
		want       result
	}{
		{"string content", `{"model":"fake","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":10,"temperature":0}`,
			result{Text: text(gen), FinishReason: "length", Usage: usageOfCounts(len(hi), 10)}},
		{"content parts", `{"messages":[{"role":"user","content":[{"type":"text","text":"h"},{"type":"text","text":"i"}]}],"max_completion_tokens":10,"temperature":0}`,
			result{Text: text(gen), FinishReason: "length", Usage: usageOfCounts(len(hi), 10)}},
		{"max_tokens", `{"messages":[{"role":"user","content":"hi","name":"bob"}],"max_tokens":4,"temperature":0}`,
			result{Text: text(gen[:4]), FinishReason: "length", Usage: usageOfCounts(len(hi), 4)}},
		{"max_completion_tokens wins", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":9,"max_completion_tokens":4,"temperature":0}`,
			result{Text: text(gen[:4]), FinishReason: "length", Usage: usageOfCounts(len(hi), 4)}},
		{"conversation", `{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}],"max_completion_tokens":6,"temperature":0,"logprobs":false}`,
			result{Text: text(sysGen), FinishReason: "length", Usage: usageOfCounts(len(sys), 6)}},
		{"stop", `{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":10,"temperature":0,"stop":` + mustJSON(text(gen[3:5])) + `}`,
			result{Text: text(gen[:strings.Index(text(gen), text(gen[3:5]))]), FinishReason: "stop", StopReason: text(gen[3:5]),
				Usage: usageOfCounts(len(hi), strings.Index(text(gen), text(gen[3:5]))+2)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			whole := f.whole("/v1/chat/completions", tc.body)
			if diff := cmp.Diff(tc.want, whole, ignoreCached); diff != "" {
				t.Errorf("whole (-want +got):\n%s", diff)
			}
			streamed := f.streamed("/v1/chat/completions", tc.body)
			if diff := cmp.Diff(whole, streamed, ignoreCached); diff != "" {
				t.Errorf("streamed differs from whole (-whole +streamed):\n%s", diff)
			}
		})
	}
}

func TestStreamWithoutUsage(t *testing.T) {
	f := start(t, options{})
	for _, path := range []string{"/v1/completions", "/v1/chat/completions"} {
		resp, data := f.post(path, `{"prompt":"hi","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true}`)
		events, done := sseEvents(t, data)
		if resp.StatusCode != 200 || !done || len(events) < 2 || strings.Contains(string(data), `"usage"`) {
			t.Errorf("%s: %d %q", path, resp.StatusCode, data)
		}
	}
}

func TestSeededSampling(t *testing.T) {
	f := start(t, options{})
	seeded := func(seed int) string {
		return fmt.Sprintf(`{"prompt":"hello there","max_tokens":24,"temperature":1,"top_p":0.95,"min_p":0.01,"seed":%d}`, seed)
	}
	a := f.whole("/v1/completions", seeded(7))
	b := f.streamed("/v1/completions", seeded(7))
	c := f.whole("/v1/completions", seeded(8))
	greedyText := text(greedy(append([]int32{bosID}, ids("hello there")...), 24, false))
	if a.Text != b.Text {
		t.Errorf("seed 7: whole %q, streamed %q", a.Text, b.Text)
	}
	if a.Text == c.Text || a.Text == greedyText {
		t.Errorf("sampling does not follow the seed: seed 7 %q, seed 8 %q, greedy %q", a.Text, c.Text, greedyText)
	}
}

func TestGenerationDefaults(t *testing.T) {
	model := GenerationDefaults{Temperature: ptr(0.6), TopP: ptr(0.9), TopK: ptr(20)}
	tests := []struct {
		name     string
		defaults GenerationDefaults
		body     string
		want     engine.SamplingParams
	}{
		{"vLLM's defaults", GenerationDefaults{}, `{}`, engine.SamplingParams{
			Params: sampling.Params{Temperature: 1, TopP: 1}, MaxTokens: testMaxModelLen - 10, SkipSpecialTokens: true}},
		{"the model's defaults", model, `{"max_tokens":5}`, engine.SamplingParams{
			Params: sampling.Params{Temperature: 0.6, TopP: 0.9, TopK: 20}, MaxTokens: 5, SkipSpecialTokens: true}},
		{"null means omitted", model, `{"temperature":null,"top_p":null,"top_k":null,"max_tokens":null}`, engine.SamplingParams{
			Params: sampling.Params{Temperature: 0.6, TopP: 0.9, TopK: 20}, MaxTokens: testMaxModelLen - 10, SkipSpecialTokens: true}},
		{"the request wins", model,
			`{"temperature":0,"top_p":1,"top_k":-1,"min_p":0.1,"seed":-1,"stop":"x","stop_token_ids":[7],"ignore_eos":true,"min_tokens":2,"skip_special_tokens":false,"max_tokens":9}`,
			engine.SamplingParams{
				Params:    sampling.Params{Temperature: 0, TopP: 1, TopK: -1, MinP: 0.1, Seed: 1<<64 - 1, Seeded: true},
				MaxTokens: 9, MinTokens: 2, Stop: []string{"x"}, StopTokenIDs: []int32{7}, IgnoreEOS: true,
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{cfg: Config{MaxModelLen: testMaxModelLen, Defaults: tc.defaults}}
			var fields samplingFields
			if e := decodeFields([]byte(tc.body), &fields); e != nil {
				t.Fatal(e)
			}
			got, e := s.samplingParams(&fields, 10, fields.MaxTokens)
			if e != nil {
				t.Fatal(e)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	// End to end: a model default of temperature 0 makes requests that omit it greedy.
	f := start(t, options{server: func(c *Config) { c.Defaults.Temperature = ptr(0.0) }})
	got := f.whole("/v1/completions", `{"prompt":"hello there","max_tokens":10}`)
	if want := text(greedy(append([]int32{bosID}, ids("hello there")...), 10, false)); got.Text != want {
		t.Errorf("with a default temperature of 0: %q, want the greedy %q", got.Text, want)
	}
}

func TestErrors(t *testing.T) {
	f := start(t, options{server: func(c *Config) { c.RetryAfter = 1500 * time.Millisecond }})
	long := strings.Repeat("x", testMaxModelLen)
	tests := []struct {
		name, method, path, body string
		status                   int
		typ                      string
		param                    any // nil or a string
		msg                      string
	}{
		{"malformed JSON", "POST", "/v1/completions", `{"prompt": "hi"`, 400, "BadRequestError", nil, "malformed JSON"},
		{"not an object", "POST", "/v1/completions", `[1, 2]`, 400, "BadRequestError", nil, "must be a JSON object"},
		{"empty body", "POST", "/v1/chat/completions", ``, 400, "BadRequestError", nil, "malformed JSON"},
		{"max_tokens a string", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": "ten"}`, 400, "BadRequestError", "max_tokens", `"max_tokens": expected an integer, got string`},
		{"max_tokens a fraction", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": 1.5}`, 400, "BadRequestError", "max_tokens", "expected an integer"},
		{"temperature a string", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}`, 400, "BadRequestError", "temperature", "expected a number"},
		{"stream a string", "POST", "/v1/completions", `{"prompt": "hi", "stream": "yes"}`, 400, "BadRequestError", "stream", "expected a boolean"},
		{"include_usage a number", "POST", "/v1/completions", `{"prompt": "hi", "stream": true, "stream_options": {"include_usage": 1}}`, 400, "BadRequestError", "stream_options.include_usage", "expected a boolean"},
		{"stop a number", "POST", "/v1/completions", `{"prompt": "hi", "stop": 5}`, 400, "BadRequestError", "stop", "a string or a list of strings"},
		{"stop_token_ids strings", "POST", "/v1/completions", `{"prompt": "hi", "stop_token_ids": ["a"]}`, 400, "BadRequestError", "stop_token_ids", "expected an integer, got string"},
		{"user a number", "POST", "/v1/completions", `{"prompt": "hi", "user": 5}`, 400, "BadRequestError", "user", "expected a string"},
		{"messages a string", "POST", "/v1/chat/completions", `{"messages": "hi"}`, 400, "BadRequestError", "messages", "expected an array of objects"},
		{"role a number", "POST", "/v1/chat/completions", `{"messages": [{"role": 1, "content": "x"}]}`, 400, "BadRequestError", "messages.role", "expected a string"},
		{"prompt an object", "POST", "/v1/completions", `{"prompt": {"text": "hi"}}`, 400, "BadRequestError", "prompt", "a string or a list of token ids"},
		{"prompt missing", "POST", "/v1/completions", `{"max_tokens": 3}`, 400, "BadRequestError", "prompt", "required"},
		{"empty prompt", "POST", "/v1/completions", `{"prompt": ""}`, 400, "BadRequestError", "prompt", "empty"},
		{"empty token list", "POST", "/v1/completions", `{"prompt": []}`, 400, "BadRequestError", "prompt", "empty"},
		{"token out of vocabulary", "POST", "/v1/completions", `{"prompt": [5, 256]}`, 400, "BadRequestError", "prompt", "token id 256 is out of vocabulary"},
		{"negative token", "POST", "/v1/completions", `{"prompt": [-1]}`, 400, "BadRequestError", "prompt", "out of vocabulary"},
		{"batched prompts", "POST", "/v1/completions", `{"prompt": ["a", "b"]}`, 400, "BadRequestError", "prompt", "batched prompts are not supported"},
		{"batched token prompts", "POST", "/v1/completions", `{"prompt": [[1], [2]]}`, 400, "BadRequestError", "prompt", "batched prompts are not supported"},
		{"prompt fills the context", "POST", "/v1/completions", `{"prompt": "` + long + `"}`, 400, "BadRequestError", "prompt", "maximum context length is 256 tokens"},
		{"prompt and max_tokens overflow", "POST", "/v1/completions", `{"prompt": "` + long[:200] + `", "max_tokens": 100}`, 400, "BadRequestError", "max_tokens", "maximum context length is 256 tokens. However, you requested 301 tokens"},
		{"chat overflow", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 300}`, 400, "BadRequestError", "max_completion_tokens", "maximum context length"},
		{"max_tokens 0", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": 0}`, 400, "BadRequestError", "max_tokens", "at least 1"},
		{"max_tokens negative", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}`, 400, "BadRequestError", "max_tokens", "at least 1"},
		{"min_tokens over max_tokens", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": 2, "min_tokens": 3}`, 400, "BadRequestError", "min_tokens", "min_tokens"},
		{"negative temperature", "POST", "/v1/completions", `{"prompt": "a", "temperature": -1}`, 400, "BadRequestError", "temperature", "at least 0"},
		{"top_p 0", "POST", "/v1/completions", `{"prompt": "a", "top_p": 0}`, 400, "BadRequestError", "top_p", "(0, 1]"},
		{"top_k -2", "POST", "/v1/completions", `{"prompt": "a", "top_k": -2}`, 400, "BadRequestError", "top_k", "top_k"},
		{"min_p 2", "POST", "/v1/completions", `{"prompt": "a", "min_p": 2}`, 400, "BadRequestError", "min_p", "[0, 1]"},
		{"empty stop string", "POST", "/v1/completions", `{"prompt": "a", "stop": [""]}`, 400, "BadRequestError", "stop", "empty"},
		{"n=2", "POST", "/v1/completions", `{"prompt": "a", "n": 2}`, 400, "BadRequestError", "n", "n=1"},
		{"best_of", "POST", "/v1/completions", `{"prompt": "a", "best_of": 3}`, 400, "BadRequestError", "best_of", "best_of=1"},
		{"completion logprobs", "POST", "/v1/completions", `{"prompt": "a", "logprobs": 0}`, 400, "BadRequestError", "logprobs", "not supported"},
		{"chat logprobs", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "x"}], "logprobs": true}`, 400, "BadRequestError", "logprobs", "not supported"},
		{"chat top_logprobs", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}`, 400, "BadRequestError", "top_logprobs", "not supported"},
		{"presence_penalty", "POST", "/v1/completions", `{"prompt": "a", "presence_penalty": 0.5}`, 400, "BadRequestError", "presence_penalty", "not supported"},
		{"logit_bias", "POST", "/v1/completions", `{"prompt": "a", "logit_bias": {"5": 1}}`, 400, "BadRequestError", "logit_bias", "not supported"},
		{"suffix", "POST", "/v1/completions", `{"prompt": "a", "suffix": "z"}`, 400, "BadRequestError", "suffix", "not supported"},
		{"stream_options without stream", "POST", "/v1/completions", `{"prompt": "a", "stream_options": {"include_usage": true}}`, 400, "BadRequestError", "stream_options", "stream is true"},
		{"no messages", "POST", "/v1/chat/completions", `{"messages": []}`, 400, "BadRequestError", "messages", "must not be empty"},
		{"messages missing", "POST", "/v1/chat/completions", `{"model": "fake"}`, 400, "BadRequestError", "messages", "must not be empty"},
		{"unknown role", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "x"}, {"role": "wizard", "content": "x"}]}`, 400, "BadRequestError", "messages[1].role", `unknown role "wizard"`},
		{"image part", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}`, 400, "BadRequestError", "messages[0].content", "image_url"},
		{"content a number", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": 5}]}`, 400, "BadRequestError", "messages[0].content", "a string or a list of content parts"},
		{"template error", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "FAIL"}]}`, 400, "BadRequestError", "messages", "refuses"},
		{"unknown model", "POST", "/v1/completions", `{"model": "gpt-9", "prompt": "a"}`, 404, "NotFoundError", "model", "The model `gpt-9` does not exist."},
		{"unknown chat model", "POST", "/v1/chat/completions", `{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}`, 404, "NotFoundError", "model", "does not exist"},
		{"unknown endpoint", "POST", "/v1/embeddings", `{}`, 404, "NotFoundError", nil, "no such endpoint"},
		{"unknown path", "GET", "/nowhere", ``, 404, "NotFoundError", nil, "no such endpoint"},
		{"GET completions", "GET", "/v1/completions", ``, 405, "MethodNotAllowed", nil, "use POST"},
		{"POST models", "POST", "/v1/models", `{}`, 405, "MethodNotAllowed", nil, "use GET"},
		{"DELETE health", "DELETE", "/health", ``, 405, "MethodNotAllowed", nil, "use GET"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			resp, body := f.do(tc.method, tc.path, tc.body)
			var e wireError
			if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
				t.Fatalf("status %d, body %s: %v", resp.StatusCode, body, err)
			}
			if resp.StatusCode != tc.status || e.Error.Code != tc.status || e.Error.Type != tc.typ ||
				!cmp.Equal(e.Error.Param, tc.param) || !strings.Contains(e.Error.Message, tc.msg) {
				t.Errorf("status %d, error %+v\nwant %d, %s, param %v, message containing %q", resp.StatusCode, *e.Error, tc.status, tc.typ, tc.param, tc.msg)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if tc.status == 405 && resp.Header.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
		})
	}
}

func TestAPIKey(t *testing.T) {
	f := start(t, options{server: func(c *Config) { c.APIKey = "sekret" }})
	tests := []struct {
		name, method, path, body, auth string
		status                         int
	}{
		{"no key", "POST", "/v1/completions", `{"prompt":"a","max_tokens":1}`, "", 401},
		{"wrong key", "POST", "/v1/completions", `{"prompt":"a","max_tokens":1}`, "Bearer nope", 401},
		{"not a bearer", "POST", "/v1/completions", `{"prompt":"a","max_tokens":1}`, "sekret", 401},
		{"right key", "POST", "/v1/completions", `{"prompt":"a","max_tokens":1}`, "Bearer sekret", 200},
		{"chat with key", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_tokens":1}`, "Bearer sekret", 200},
		{"models without key", "GET", "/v1/models", "", "", 401},
		{"models with key", "GET", "/v1/models", "", "Bearer sekret", 200},
		{"kv events without key", "GET", "/v1/kv_events", "", "", 401},
		{"unknown /v1 path without key", "GET", "/v1/secret", "", "", 401},
		{"health needs no key", "GET", "/health", "", "", 200},
		{"metrics need no key", "GET", "/metrics", "", "", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			var header []string
			if tc.auth != "" {
				header = []string{"Authorization", tc.auth}
			}
			resp, body := f.do(tc.method, tc.path, tc.body, header...)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status == 401 && (!strings.Contains(string(body), `"type":"AuthenticationError"`) || resp.Header.Get("WWW-Authenticate") == "") {
				t.Errorf("401 body %s, headers %v", body, resp.Header)
			}
		})
	}
}

func TestQueueFull429(t *testing.T) {
	f := start(t, options{
		engine: func(c *engine.Config) { c.MaxWaiting = 1 },
		server: func(c *Config) { c.RetryAfter = 1500 * time.Millisecond },
	})
	f.exec.setDelay(3 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// max_num_seqs is 4: four requests run and a fifth fills the one waiting slot.
	var open []*http.Response
	defer func() {
		cancel()
		for _, r := range open {
			r.Body.Close()
		}
	}()
	for i := range 5 {
		resp := f.openStream(ctx, "/v1/completions", fmt.Sprintf(`{"prompt":"busy %d","max_tokens":100,"ignore_eos":true,"stream":true}`, i))
		open = append(open, resp)
		if i < 4 {
			// Its first token means it runs, so the next one is the one left waiting.
			if _, err := readEvent(bufio.NewReader(resp.Body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for st := f.eng.Stats(); st.Waiting+st.Running < 5; st = f.eng.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("the fifth request never queued: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
	for _, path := range []string{"/v1/completions", "/v1/chat/completions"} {
		resp, body := f.post(path, `{"prompt":"one more","messages":[{"role":"user","content":"x"}],"max_tokens":10,"stream":true}`)
		var e struct {
			Error struct {
				Type  string `json:"type"`
				Code  int    `json:"code"`
				Param any    `json:"param"`
			} `json:"error"`
		}
		json.Unmarshal(body, &e)
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" || e.Error.Type != "RateLimitError" || e.Error.Code != 429 {
			t.Errorf("%s: got %d, Retry-After %q, body %s; want 429, 2, RateLimitError", path, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
	}
}

func TestDisconnectAbortsRequest(t *testing.T) {
	f := start(t, options{})
	// 200 steps of 10 ms: a request runs for 2 s at least, so the test sees it running
	// before it ends even when the machine is loaded (it cancels it at once).
	f.exec.setDelay(10 * time.Millisecond)
	tests := []struct {
		name, path, body string
		stream           bool
	}{
		{"streamed completion", "/v1/completions", `{"prompt":"a long story","max_tokens":200,"ignore_eos":true,"stream":true}`, true},
		{"streamed chat", "/v1/chat/completions", `{"messages":[{"role":"user","content":"a long story"}],"max_tokens":200,"ignore_eos":true,"stream":true}`, true},
		{"whole completion", "/v1/completions", `{"prompt":"a long story","max_tokens":200,"ignore_eos":true}`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.stream {
				resp := f.openStream(ctx, tc.path, tc.body)
				r := bufio.NewReader(resp.Body)
				for range 2 { // the chat role chunk, then text
					if _, err := readEvent(r); err != nil {
						t.Fatal(err)
					}
				}
				// Stats are published at the end of a step, after its tokens went out.
				deadline := time.Now().Add(30 * time.Second)
				for st := f.eng.Stats(); st.FreeBlocks == st.NumBlocks || st.Running != 1; st = f.eng.Stats() {
					if time.Now().After(deadline) {
						t.Fatalf("nothing held mid-stream: %+v", st)
					}
					time.Sleep(time.Millisecond)
				}
				cancel()
				resp.Body.Close()
			} else {
				errc := make(chan error, 1)
				go func() {
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+tc.path, strings.NewReader(tc.body))
					_, err := f.client.Do(req)
					errc <- err
				}()
				deadline := time.Now().Add(30 * time.Second)
				for f.eng.Stats().Running == 0 {
					if time.Now().After(deadline) {
						t.Fatal("the request never ran")
					}
					time.Sleep(time.Millisecond)
				}
				cancel()
				if err := <-errc; !errors.Is(err, context.Canceled) {
					t.Errorf("client error %v", err)
				}
			}
			waitIdle(t, f.eng)
		})
	}
}

func TestModelsHealthMetrics(t *testing.T) {
	f := start(t, options{})
	f.whole("/v1/completions", `{"prompt":"warm up","max_tokens":3}`)
	resp, body := f.do("GET", "/v1/models", "")
	var models map[string]any
	if err := json.Unmarshal(body, &models); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s: %v", resp.StatusCode, body, err)
	}
	want := map[string]any{"object": "list", "data": []any{map[string]any{
		"id": "fake", "object": "model", "owned_by": "servelab", "root": "fake", "parent": nil, "max_model_len": float64(testMaxModelLen),
	}}}
	ignoreCreated := cmpopts.IgnoreMapEntries(func(k string, _ any) bool { return k == "created" })
	if diff := cmp.Diff(want, models, ignoreCreated); diff != "" {
		t.Errorf("/v1/models (-want +got):\n%s", diff)
	}
	if created, _ := models["data"].([]any)[0].(map[string]any)["created"].(float64); created < 1e9 {
		t.Errorf("created %v", created)
	}
	if resp, _ := f.do("GET", "/health", ""); resp.StatusCode != 200 {
		t.Errorf("/health %d", resp.StatusCode)
	}
	_, body = f.do("GET", "/metrics", "")
	for _, name := range []string{"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
		"vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
		"vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
		`vllm:request_success_total{engine="0",finished_reason="length",model_name="fake"} 1`} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

type wireKVBatch struct {
	Seq    uint64  `json:"seq"`
	TS     float64 `json:"ts"`
	Events []struct {
		Type        string   `json:"type"`
		BlockHashes []uint64 `json:"block_hashes"`
	} `json:"events"`
}

func TestKVEvents(t *testing.T) {
	f := start(t, options{})
	warm := append([]int32{bosID}, ids("warm the cache up")...) // 18 tokens: 4 full blocks
	f.whole("/v1/completions", `{"prompt":"warm the cache up","max_tokens":3}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/v1/kv_events", nil)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, ct)
	}
	r := bufio.NewReader(resp.Body)
	next := func() wireKVBatch {
		t.Helper()
		data, err := readEvent(r)
		if err != nil {
			t.Fatal(err)
		}
		var b wireKVBatch
		if err := json.Unmarshal([]byte(data), &b); err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		if d := time.Since(time.Unix(0, int64(b.TS*1e9))); d < -time.Second || d > time.Minute {
			t.Errorf("ts %v is %v from now", b.TS, d)
		}
		return b
	}
	// The raw JSON of the snapshot: hashes are exact JSON integers.
	snapshot := next()
	wantHashes := serving.TokenBlockHashes(warm, 4)
	if snapshot.Seq != 1 || len(snapshot.Events) != 2 || snapshot.Events[0].Type != "AllBlocksCleared" || snapshot.Events[0].BlockHashes != nil ||
		snapshot.Events[1].Type != "BlockStored" || !cmp.Equal(snapshot.Events[1].BlockHashes, wantHashes, cmpopts.SortSlices(func(a, b uint64) bool { return a < b })) {
		t.Errorf("snapshot %+v, want AllBlocksCleared then BlockStored of %v", snapshot, wantHashes)
	}
	// A new prompt's blocks arrive as BlockStored, in prefix order, in a later batch.
	other := append([]int32{bosID}, ids("a different prompt")...)
	f.whole("/v1/completions", `{"prompt":"a different prompt","max_tokens":2}`)
	var stored []uint64
	for seq := uint64(2); len(stored) < 4; seq++ {
		b := next()
		if b.Seq != seq {
			t.Fatalf("seq %d, want %d", b.Seq, seq)
		}
		for _, e := range b.Events {
			if e.Type == "BlockStored" {
				stored = append(stored, e.BlockHashes...)
			}
		}
	}
	if diff := cmp.Diff(serving.TokenBlockHashes(other, 4), stored); diff != "" {
		t.Errorf("stored hashes (-want +got):\n%s", diff)
	}
}

// blockingWriter is a ResponseWriter whose writes wait until released, like a client
// that stopped reading.
type blockingWriter struct {
	header  http.Header
	release chan struct{}
	wrote   chan struct{} // closed at the first write
	once    sync.Once
	mu      sync.Mutex
	body    strings.Builder
}

func (w *blockingWriter) Header() http.Header { return w.header }
func (w *blockingWriter) WriteHeader(int)     {}
func (w *blockingWriter) Flush()              {}
func (w *blockingWriter) Write(b []byte) (int, error) {
	w.once.Do(func() { close(w.wrote) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.body.Write(b)
}

func TestKVEventsSubscriberFallsBehind(t *testing.T) {
	f := start(t, options{})
	f.srv.kvBuffer = 1
	w := &blockingWriter{header: http.Header{}, release: make(chan struct{}), wrote: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.srv.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/v1/kv_events", nil))
	}()
	<-w.wrote // the snapshot is being written; the writer is stuck
	// Each new prompt publishes a batch; with room for one, the second overflows.
	for i := range 3 {
		f.whole("/v1/completions", fmt.Sprintf(`{"prompt":"prompt number %d, long enough for blocks","max_tokens":1}`, i))
	}
	close(w.release)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the kv_events response did not end after the subscription was dropped")
	}
	events, done2 := sseEvents(t, []byte(w.body.String()))
	if done2 || len(events) != 2 {
		t.Fatalf("got %d batches %q; want the snapshot and the one batch buffered", len(events), events)
	}
	var b wireKVBatch
	json.Unmarshal([]byte(events[1]), &b)
	if b.Seq != 2 {
		t.Errorf("second batch %s", events[1])
	}
}

func TestKVEventsEndAtShutdown(t *testing.T) {
	f := start(t, options{})
	req, _ := http.NewRequest("GET", f.url+"/v1/kv_events", nil)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	if events, _ := sseEvents(t, data); len(events) != 1 {
		t.Errorf("events %q, want the snapshot", events)
	}
	// New subscriptions are refused.
	rec := httptest.NewRecorder()
	f.srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/kv_events", nil))
	if rec.Code != 503 {
		t.Errorf("kv_events after shutdown: %d", rec.Code)
	}
}

// streamOutcome reads a stream to its end: its finish reason, whether [DONE] came, and
// whether the connection broke.
func streamOutcome(body io.Reader) (finish string, done, broken bool) {
	r := bufio.NewReader(body)
	for {
		data, err := readEvent(r)
		if err != nil {
			return finish, done, err != io.EOF || !done
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var c wireResponse
		json.Unmarshal([]byte(data), &c)
		for _, ch := range c.Choices {
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
	}
}

func TestShutdown(t *testing.T) {
	tests := []struct {
		name      string
		maxTokens int
		deadline  time.Duration
		finish    string
	}{
		{"in-flight requests finish", 40, 10 * time.Second, "length"},
		// Shutdown lets the handlers write the aborted ends before it closes connections.
		{"the deadline aborts them", 200, 150 * time.Millisecond, "abort"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			baseline := runtime.NumGoroutine()
			f := start(t, options{})
			f.exec.setDelay(2 * time.Millisecond)
			type outcome struct {
				finish       string
				done, broken bool
			}
			outcomes := make(chan outcome, 3)
			for i := range 3 {
				path, body := "/v1/completions", fmt.Sprintf(`{"prompt":"in flight %d","max_tokens":%d,"ignore_eos":true,"stream":true}`, i, tc.maxTokens)
				if i == 2 {
					path, body = "/v1/chat/completions", fmt.Sprintf(`{"messages":[{"role":"user","content":"x"}],"max_tokens":%d,"ignore_eos":true,"stream":true}`, tc.maxTokens)
				}
				resp := f.openStream(context.Background(), path, body)
				go func() {
					defer resp.Body.Close()
					var o outcome
					o.finish, o.done, o.broken = streamOutcome(resp.Body)
					outcomes <- o
				}()
			}
			ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
			defer cancel()
			shutdown := make(chan error, 1)
			go func() { shutdown <- f.srv.Shutdown(ctx) }()
			// While it drains: unhealthy, and new requests are refused.
			deadline := time.Now().Add(30 * time.Second)
			for {
				rec := httptest.NewRecorder()
				f.srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/health", nil))
				if rec.Code == 503 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("/health still %d during shutdown", rec.Code)
				}
				time.Sleep(time.Millisecond)
			}
			rec := httptest.NewRecorder()
			f.srv.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/v1/completions", strings.NewReader(`{"prompt":"late","max_tokens":2}`)))
			if rec.Code != 503 || !strings.Contains(rec.Body.String(), "ServiceUnavailableError") {
				t.Errorf("a request during shutdown: %d %s", rec.Code, rec.Body)
			}
			err := <-shutdown
			if tc.finish == "length" && err != nil || tc.finish == "abort" && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Shutdown: %v", err)
			}
			for range 3 {
				select {
				case o := <-outcomes:
					if o.finish != tc.finish || !o.done || o.broken {
						t.Errorf("stream ended %+v, want finish_reason %q and [DONE]", o, tc.finish)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("a stream never ended")
				}
			}
			waitIdle(t, f.eng)
			f.client.Transport.(*http.Transport).CloseIdleConnections()
			// No handler, connection or engine goroutine is left behind.
			deadline = time.Now().Add(30 * time.Second)
			for runtime.NumGoroutine() > baseline {
				if time.Now().After(deadline) {
					buf := make([]byte, 1<<16)
					t.Fatalf("%d goroutines, baseline %d:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestBodyTooLarge(t *testing.T) {
	f := start(t, options{})
	f.srv.maxBody = 1 << 10
	body := `{"prompt":"` + strings.Repeat("x", 1<<10) + `"}`
	resp, data := f.post("/v1/completions", body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(data), "RequestTooLargeError") {
		t.Errorf("status %d: %.200s", resp.StatusCode, data)
	}
}

func TestListenAndServe(t *testing.T) {
	f := start(t, options{})
	srv, err := New(Config{Engine: f.eng, Tokenizer: byteTokenizer{}, ModelName: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	if srv.cfg.MaxModelLen != testMaxModelLen || srv.retryAfter() != "1" {
		t.Errorf("defaults: max model len %d, Retry-After %s", srv.cfg.MaxModelLen, srv.retryAfter())
	}
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe("127.0.0.1:0") }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("ListenAndServe returned %v", err)
	}
	if _, err := New(Config{Tokenizer: byteTokenizer{}, ModelName: "x"}); err == nil {
		t.Error("New without an engine succeeded")
	}
}

// TestReturnTokenIDs: with vLLM's return_token_ids every generated token reaches a
// streaming client as it is produced, also while its bytes do not yet decode to text.
func TestReturnTokenIDs(t *testing.T) {
	f := start(t, options{})
	// Prompt token ids with greedy generation of 16 tokens; the fake vocabulary's byte
	// tokens above 0x7f are held back by the UTF-8 decoder until a rune completes.
	prompt := []int32{bosID}
	prompt = append(prompt, ids("hello there")...)
	want := greedy(prompt, 16, true)
	body := `{"prompt":"hello there","max_tokens":16,"min_tokens":16,"ignore_eos":true,"temperature":0,"stream":true,"return_token_ids":true}`
	resp, data := f.post("/v1/completions", body)
	events, done := sseEvents(t, data)
	if resp.StatusCode != 200 || !done {
		t.Fatalf("%d %s", resp.StatusCode, data)
	}
	var got []int32
	var streamedText string
	for _, e := range events {
		var c struct {
			Choices []struct {
				Text     string  `json:"text"`
				TokenIDs []int32 `json:"token_ids"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			t.Fatal(err)
		}
		for _, ch := range c.Choices {
			got = append(got, ch.TokenIDs...)
			streamedText += ch.Text
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("streamed token ids (-want +got):\n%s", diff)
	}
	if streamedText != text(want) {
		t.Errorf("streamed text %q, want %q", streamedText, text(want))
	}
	_, wholeBody := f.post("/v1/completions", `{"prompt":"hello there","max_tokens":16,"min_tokens":16,"ignore_eos":true,"temperature":0,"return_token_ids":true}`)
	var whole struct {
		Choices []struct {
			TokenIDs []int32 `json:"token_ids"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(wholeBody, &whole); err != nil || len(whole.Choices) != 1 {
		t.Fatalf("%v: %s", err, wholeBody)
	}
	if diff := cmp.Diff(want, whole.Choices[0].TokenIDs); diff != "" {
		t.Errorf("whole response's token ids (-want +got):\n%s", diff)
	}
	_, plain := f.post("/v1/completions", `{"prompt":"hello there","max_tokens":4,"temperature":0}`)
	if strings.Contains(string(plain), "token_ids") {
		t.Errorf("token_ids without return_token_ids: %s", plain)
	}
}

// TestServerInfo: GET /server_info reports the engine's resolved configuration, every
// batch parameter included even where the spec left it to its default, and /metrics
// carries the same values in vllm:cache_config_info and servelab:engine_config_info.
func TestServerInfo(t *testing.T) {
	// Like /metrics, /server_info needs no API key.
	f := start(t, options{server: func(c *Config) { c.APIKey = "key" }})
	resp, body := f.do("GET", "/server_info", "")
	if resp.StatusCode != 200 {
		t.Fatalf("/server_info %d %s", resp.StatusCode, body)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	batchSpec := "vllm:chunked_prefill=true,long_prefill_token_threshold=0,max_num_batched_tokens=64,max_num_seqs=4"
	want := map[string]any{
		"servelab_config": map[string]any{
			"batch": batchSpec, "evict": "lru", "block_size": 4.0, "num_gpu_blocks": 128.0,
			"max_model_len": float64(testMaxModelLen), "enable_prefix_caching": true,
		},
		"vllm_config": map[string]any{
			"model_config": map[string]any{"max_model_len": float64(testMaxModelLen)},
			"cache_config": map[string]any{"block_size": 4.0, "num_gpu_blocks": 128.0, "enable_prefix_caching": true},
			"scheduler_config": map[string]any{"max_num_batched_tokens": 64.0, "max_num_seqs": 4.0,
				"long_prefill_token_threshold": 0.0, "enable_chunked_prefill": true},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("/server_info (-want +got):\n%s", diff)
	}
	// A server given its device reports it, and vLLM's device_config and model_config.dtype.
	g := start(t, options{server: func(c *Config) { c.Device = &DeviceInfo{Device: "cuda", Name: "NVIDIA H200", DType: "bfloat16"} }})
	_, body = g.do("GET", "/server_info", "")
	var dev struct {
		Device DeviceInfo `json:"device"`
		VLLM   struct {
			Device map[string]any `json:"device_config"`
			Model  map[string]any `json:"model_config"`
		} `json:"vllm_config"`
	}
	if err := json.Unmarshal(body, &dev); err != nil {
		t.Fatal(err)
	}
	if dev.Device != (DeviceInfo{"cuda", "NVIDIA H200", "bfloat16"}) || dev.VLLM.Device["device"] != "cuda" || dev.VLLM.Model["dtype"] != "bfloat16" {
		t.Errorf("/server_info with a device: %s", body)
	}
	if resp, body := f.do("GET", "/server_info?config_format=text", ""); resp.StatusCode != 400 || !strings.Contains(string(body), "config_format") {
		t.Errorf("config_format=text: %d %s, want a 400 naming config_format", resp.StatusCode, body)
	}
	_, body = f.do("GET", "/metrics", "")
	for _, line := range []string{
		`vllm:cache_config_info{block_size="4",enable_prefix_caching="True",engine="0",num_gpu_blocks="128"} 1`,
		`servelab:engine_config_info{batch="` + batchSpec + `",block_size="4",enable_prefix_caching="True",engine="0",evict="lru",max_model_len="256",num_gpu_blocks="128"} 1`,
	} {
		if !strings.Contains(string(body), line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
}
