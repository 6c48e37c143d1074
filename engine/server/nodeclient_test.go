package server

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestOfficialOpenAIClient drives the server with the official OpenAI Node client
// (testdata/openai-node: `npm ci` there installs the pinned openai package).
func TestOfficialOpenAIClient(t *testing.T) {
	if _, err := NodeClientDir(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	f := start(t, options{server: func(c *Config) { c.APIKey = "test-key" }})
	f.exec.setDelay(time.Millisecond) // slow enough that text arrives over several chunks
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := RunOpenAINodeClient(ctx, f.url, "fake", "test-key")
	if errors.Is(err, ErrNodeClientUnavailable) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("openai %s: chat %q in %d chunks, completion %q in %d chunks", res.ClientVersion, res.Chat.Text, res.Chat.Chunks, res.Completion.Text, res.Completion.Chunks)
	if err := res.Check(); err != nil {
		t.Error(err)
	}
	// The fake model is greedy-predictable: check the texts themselves.
	chatPrompt, _ := byteTokenizer{}.RenderChat([]Message{{"user", "Tell me about prefix caching."}}, true)
	if want := text(greedy(ids(chatPrompt), 16, false)); res.Chat.Text != want {
		t.Errorf("chat text %q, want %q", res.Chat.Text, want)
	}
	if want := text(greedy(append([]int32{bosID}, ids("The engine answers one token at a time")...), 16, false)); res.Completion.Text != want {
		t.Errorf("completion text %q, want %q", res.Completion.Text, want)
	}
	if res.Chat.Chunks < 5 || res.Completion.Chunks < 4 {
		t.Errorf("text came in too few chunks to call it streamed: chat %d, completion %d", res.Chat.Chunks, res.Completion.Chunks)
	}
	if res.Chat.Usage.CompletionTokens != 16 || res.Completion.Usage.CompletionTokens != 16 || len(res.Models) != 1 || res.Models[0] != "fake" {
		t.Errorf("usage %+v %+v, models %v", *res.Chat.Usage, *res.Completion.Usage, res.Models)
	}
	// A wrong key is refused through the client too.
	if _, err := RunOpenAINodeClient(ctx, f.url+"/v1", "fake", "wrong"); err == nil {
		t.Error("a wrong API key was accepted")
	}
}

func TestClientResultCheck(t *testing.T) {
	u := func(p, c int) *ClientUsage {
		return &ClientUsage{PromptTokens: p, CompletionTokens: c, TotalTokens: p + c}
	}
	good := func() ClientResult {
		return ClientResult{
			Chat: ClientRun{Text: "abc", Chunks: 4, FinishReason: "length", Usage: u(5, 3), FirstRole: "assistant",
				WholeText: "abc", WholeFinishReason: "length", WholeUsage: u(5, 3)},
			Completion: ClientRun{Text: "xy", Chunks: 3, FinishReason: "stop", Usage: u(4, 2),
				WholeText: "xy", WholeFinishReason: "stop", WholeUsage: u(4, 2)},
		}
	}
	tests := []struct {
		name   string
		mutate func(*ClientResult)
		want   string // "" for no error
	}{
		{"good", func(*ClientResult) {}, ""},
		{"no text", func(r *ClientResult) { r.Completion.Text, r.Completion.WholeText = "", "" }, "completion: no streamed text"},
		{"texts differ", func(r *ClientResult) { r.Chat.WholeText = "abd" }, "chat: streamed text"},
		{"finish differs", func(r *ClientResult) { r.Chat.WholeFinishReason = "stop" }, "chat: streamed finish_reason"},
		{"no usage", func(r *ClientResult) { r.Completion.Usage = nil }, "completion: usage missing"},
		{"bad total", func(r *ClientResult) { r.Chat.Usage.TotalTokens = 1 }, "chat: inconsistent"},
		{"usage differs", func(r *ClientResult) { r.Chat.WholeUsage = u(5, 4) }, "chat: streamed usage"},
		{"no role", func(r *ClientResult) { r.Chat.FirstRole = "" }, "role"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := good()
			tc.mutate(&r)
			err := r.Check()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Check() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
