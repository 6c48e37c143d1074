package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRouterChatHashesEqualEngines: the router hashes a chat request's prompt as the
// engine runs it (the model's chat template applied, then encoded without special tokens),
// so the block hashes it routes with are the ones the engine publishes in its KV events
// for the same messages. Before, chat prompts were hashed from "role\ncontent" text and
// never matched.
func TestRouterChatHashesEqualEngines(t *testing.T) {
	dir := synthTiny(t)
	url := startEngine(t, dir)
	f := routerFlags{spec: "round-robin", blockSize: 16, model: dir, logf: t.Logf}
	r, err := f.build()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	body, _ := json.Marshal(map[string]any{
		"max_tokens": 1,
		"messages": []map[string]any{
			{"role": "system", "content": "You are a terse assistant that answers questions about foxes and dogs."},
			{"role": "user", "content": []map[string]string{
				{"type": "text", "text": "The quick brown fox jumps over the lazy dog. "},
				{"type": "text", "text": "Which animal jumps, and over which other animal does it jump?"},
			}},
		},
	})
	resp, err := http.Post(url+"/v1/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	err = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("chat request: %v, status %d", err, resp.StatusCode)
	}
	if out.Usage.PromptTokens < 32 || out.Usage.PromptTokens%16 == 15 {
		t.Fatalf("prompt of %d tokens: want at least two full blocks and no block the one generated token fills", out.Usage.PromptTokens)
	}

	got := r.BlockHashes(context.Background(), "/v1/chat/completions", body)
	if len(got) != out.Usage.PromptTokens/16 {
		t.Errorf("router hashed %d blocks, the engine's prompt has %d full blocks", len(got), out.Usage.PromptTokens/16)
	}
	slices.Sort(got)
	if diff := cmp.Diff(engineMedia(t, url)[""], got); diff != "" {
		t.Errorf("router's chat block hashes differ from the engine's cached blocks (-engine +router):\n%s", diff)
	}
}
