package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/engine"
)

// postWithin posts body and reads the response within d: a request that generates past
// the context may never end.
func (f *fixture) postWithin(d time.Duration, path, body string) (int, []byte) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.url+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		f.t.Fatalf("%s: %v", body, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatalf("%s: reading the response: %v", body, err)
	}
	return resp.StatusCode, data
}

type wireError struct {
	Error *struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Param   any    `json:"param"`
		Code    int    `json:"code"`
	} `json:"error"`
}

// TestHostileSizes: sizes a hostile client could send are refused with a 400 naming the
// field, and no request the server accepts generates more than max_model_len minus its
// prompt, streamed or not.
func TestHostileSizes(t *testing.T) {
	f := start(t, options{})
	const maxInt = "9223372036854775807"
	cmpl := func(extra string) string { return `{"prompt":"hello","temperature":0` + extra + `}` } // 6 tokens with BOS
	chat := func(extra string) string {
		return `{"messages":[{"role":"user","content":"hi"}],"temperature":0` + extra + `}`
	}
	stops := func(n, size int) string { return mustJSON(slices.Repeat([]string{strings.Repeat("z", size)}, n)) }
	tests := []struct {
		name, path, body string
		param            string // "" when the request is valid
	}{
		{"max_tokens MaxInt64", "/v1/completions", cmpl(`,"max_tokens":` + maxInt), "max_tokens"},
		{"max_tokens MaxInt64 ignore_eos", "/v1/completions", cmpl(`,"max_tokens":` + maxInt + `,"ignore_eos":true`), "max_tokens"},
		{"max_tokens wraps to MinInt64", "/v1/completions", cmpl(`,"max_tokens":9223372036854775802`), "max_tokens"},
		{"max_tokens 2^63", "/v1/completions", cmpl(`,"max_tokens":9223372036854775808`), "max_tokens"},
		{"max_tokens 1e30", "/v1/completions", cmpl(`,"max_tokens":1e30`), "max_tokens"},
		{"max_tokens MinInt64", "/v1/completions", cmpl(`,"max_tokens":-9223372036854775808`), "max_tokens"},
		{"max_tokens one past the context", "/v1/completions", cmpl(`,"max_tokens":251,"ignore_eos":true`), "max_tokens"},
		{"max_tokens the whole context", "/v1/completions", cmpl(`,"max_tokens":250,"ignore_eos":true`), ""},
		{"min_tokens MaxInt64", "/v1/completions", cmpl(`,"max_tokens":4,"min_tokens":` + maxInt), "min_tokens"},
		{"min_tokens and max_tokens MaxInt64", "/v1/completions", cmpl(`,"max_tokens":` + maxInt + `,"min_tokens":` + maxInt), "max_tokens"},
		{"min_tokens MinInt64", "/v1/completions", cmpl(`,"min_tokens":-9223372036854775808`), "min_tokens"},
		{"chat max_tokens MaxInt64", "/v1/chat/completions", chat(`,"max_tokens":` + maxInt + `,"ignore_eos":true`), "max_tokens"},
		{"chat max_completion_tokens MaxInt64", "/v1/chat/completions", chat(`,"max_completion_tokens":` + maxInt), "max_completion_tokens"},
		{"chat max_completion_tokens wraps", "/v1/chat/completions", chat(`,"max_completion_tokens":9223372036854775800`), "max_completion_tokens"},
		{"chat max_completion_tokens 0", "/v1/chat/completions", chat(`,"max_completion_tokens":0`), "max_completion_tokens"},
		{"n MaxInt64", "/v1/completions", cmpl(`,"n":` + maxInt), "n"},
		{"best_of MaxInt64", "/v1/completions", cmpl(`,"best_of":` + maxInt), "best_of"},
		{"logprobs MaxInt64", "/v1/completions", cmpl(`,"logprobs":` + maxInt), "logprobs"},
		{"top_logprobs MaxInt64", "/v1/chat/completions", chat(`,"top_logprobs":` + maxInt), "top_logprobs"},
		{"seed 2^64", "/v1/completions", cmpl(`,"seed":18446744073709551616`), "seed"},
		{"seed MaxInt64", "/v1/completions", cmpl(`,"max_tokens":4,"temperature":1,"seed":` + maxInt), ""},
		{"seed MinInt64", "/v1/completions", cmpl(`,"max_tokens":4,"temperature":1,"seed":-9223372036854775808`), ""},
		{"top_k MaxInt64", "/v1/completions", cmpl(`,"max_tokens":4,"top_k":` + maxInt), ""},
		{"top_k MinInt64", "/v1/completions", cmpl(`,"top_k":-9223372036854775808`), "top_k"},
		{"priority MaxInt64", "/v1/completions", cmpl(`,"max_tokens":4,"priority":` + maxInt), ""},
		{"priority MinInt64", "/v1/completions", cmpl(`,"max_tokens":4,"priority":-9223372036854775808`), ""},
		{"too many stop strings", "/v1/completions", cmpl(`,"stop":` + stops(engine.MaxStopStrings+1, 2)), "stop"},
		{"the most stop strings", "/v1/completions", cmpl(`,"max_tokens":8,"stop":` + stops(engine.MaxStopStrings, 2)), ""},
		{"stop string too long", "/v1/completions", cmpl(`,"stop":` + stops(1, engine.MaxStopBytes+1)), "stop"},
		{"the longest stop string", "/v1/completions", cmpl(`,"max_tokens":8,"stop":` + stops(1, engine.MaxStopBytes)), ""},
		{"too many stop token ids", "/v1/completions", cmpl(`,"stop_token_ids":` + mustJSON(make([]int32, engine.MaxStopTokenIDs+1))), "stop_token_ids"},
		{"stop token id 2^31", "/v1/completions", cmpl(`,"stop_token_ids":[2147483648]`), "stop_token_ids"},
		{"prompt token id MaxInt32", "/v1/completions", `{"prompt":[2147483647]}`, "prompt"},
		{"prompt token id 2^40", "/v1/completions", `{"prompt":[1099511627776]}`, "prompt"},
		{"chat default max_tokens", "/v1/chat/completions", chat(`,"ignore_eos":true`), ""},
	}
	for _, tc := range tests {
		for _, stream := range []bool{false, true} {
			name := tc.name
			body := tc.body
			if stream {
				name += " streamed"
				body = strings.Replace(body, "{", `{"stream":true,"stream_options":{"include_usage":true},`, 1)
			}
			t.Run(name, func(t *testing.T) {
				f.t = t
				status, data := f.postWithin(30*time.Second, tc.path, body)
				if tc.param != "" {
					var e wireError
					if err := json.Unmarshal(data, &e); err != nil || e.Error == nil {
						t.Fatalf("status %d, body %.300s: want a 400 naming %s", status, data, tc.param)
					}
					if status != 400 || e.Error.Param != tc.param || e.Error.Type != "BadRequestError" {
						t.Errorf("status %d, error %+v; want a 400 naming %s", status, *e.Error, tc.param)
					}
					return
				}
				if status != 200 {
					t.Fatalf("status %d: %.300s", status, data)
				}
				u := usageOfBody(t, data, stream)
				if limit := testMaxModelLen - u.PromptTokens; u.CompletionTokens > limit || u.CompletionTokens < 1 {
					t.Errorf("usage %+v: completion tokens outside [1, %d]", u, limit)
				}
			})
		}
	}
}

// usageOfBody finds the usage in a whole response or a stream's usage chunk.
func usageOfBody(t *testing.T, data []byte, stream bool) wireUsage {
	t.Helper()
	var r wireResponse
	if !stream {
		if err := json.Unmarshal(data, &r); err != nil || r.Usage == nil {
			t.Fatalf("no usage in %.300s: %v", data, err)
		}
		return *r.Usage
	}
	events, done := sseEvents(t, data)
	for _, ev := range events {
		if err := json.Unmarshal([]byte(ev), &r); err == nil && r.Usage != nil && done {
			return *r.Usage
		}
	}
	t.Fatalf("no usage chunk in %.300s", data)
	return wireUsage{}
}

// TestStreamChunkPerToken: every generated token gets its own chunk, also when its text
// is held back (here by a stop string's hold-back), as vLLM streams; the streamed text is
// the whole response's text.
func TestStreamChunkPerToken(t *testing.T) {
	f := start(t, options{})
	for _, path := range []string{"/v1/completions", "/v1/chat/completions"} {
		t.Run(path, func(t *testing.T) {
			f.t = t
			body := `{"prompt":"twelve tokens","max_tokens":12,"ignore_eos":true,"temperature":0,"stop":["!!!!"]}`
			if strings.Contains(path, "chat") {
				body = `{"messages":[{"role":"user","content":"twelve tokens"}],"max_tokens":12,"ignore_eos":true,"temperature":0,"stop":["!!!!"]}`
			}
			whole := f.whole(path, body)
			streamed, chunks := f.streamedChunks(path, body)
			if diff := cmp.Diff(whole, streamed, ignoreCached); diff != "" {
				t.Errorf("streamed differs from whole (-whole +streamed):\n%s", diff)
			}
			if chunks != 12 || streamed.Usage.CompletionTokens != 12 {
				t.Errorf("%d content chunks for %d tokens, want 12 for 12", chunks, streamed.Usage.CompletionTokens)
			}
		})
	}
}
