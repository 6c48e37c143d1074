package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// ErrNodeClientUnavailable is wrapped by RunOpenAINodeClient's error when node or the
// installed openai npm package is missing; tests skip on it.
var ErrNodeClientUnavailable = errors.New("the official OpenAI Node client is not available")

// NodeClientDirEnv overrides where RunOpenAINodeClient looks for client.mjs and its
// node_modules.
const NodeClientDirEnv = "SERVELAB_OPENAI_NODE_DIR"

// ClientUsage is the usage object the OpenAI client received.
type ClientUsage struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	TotalTokens         int `json:"total_tokens"`
	PromptTokensDetails *struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

// ClientRun is one endpoint's exchange: a streamed request with include_usage, then the
// same request not streamed.
type ClientRun struct {
	// Text is the streamed text, Chunks the number of chunks that carried it.
	Text         string       `json:"text"`
	Chunks       int          `json:"chunks"`
	FinishReason string       `json:"finishReason"`
	Usage        *ClientUsage `json:"usage"`
	// FirstRole is the role of the chat stream's first delta (chat only).
	FirstRole         string       `json:"firstRole"`
	WholeText         string       `json:"wholeText"`
	WholeFinishReason string       `json:"wholeFinishReason"`
	WholeUsage        *ClientUsage `json:"wholeUsage"`
}

// ClientResult is what testdata/openai-node/client.mjs printed.
type ClientResult struct {
	// ClientVersion is the openai npm package's version.
	ClientVersion string    `json:"clientVersion"`
	Chat          ClientRun `json:"chat"`
	Completion    ClientRun `json:"completion"`
	// Models are the ids /v1/models listed.
	Models []string `json:"models"`
}

// Check reports the first way the result falls short of "a request sent with the official
// OpenAI client gets streamed text back": no streamed text, streamed text or finish_reason
// that differs from the non-streamed request's, missing or inconsistent usage, or a chat
// stream that does not open with the assistant role.
func (r *ClientResult) Check() error {
	for _, c := range []struct {
		name string
		run  *ClientRun
	}{{"chat", &r.Chat}, {"completion", &r.Completion}} {
		run := c.run
		switch {
		case run.Text == "":
			return fmt.Errorf("%s: no streamed text (%d chunks)", c.name, run.Chunks)
		case run.Text != run.WholeText:
			return fmt.Errorf("%s: streamed text %q differs from the whole text %q", c.name, run.Text, run.WholeText)
		case run.FinishReason == "" || run.FinishReason != run.WholeFinishReason:
			return fmt.Errorf("%s: streamed finish_reason %q, whole %q", c.name, run.FinishReason, run.WholeFinishReason)
		case run.Usage == nil || run.WholeUsage == nil:
			return fmt.Errorf("%s: usage missing (streamed %v, whole %v)", c.name, run.Usage, run.WholeUsage)
		case run.Usage.CompletionTokens < 1 || run.Usage.PromptTokens < 1 ||
			run.Usage.TotalTokens != run.Usage.PromptTokens+run.Usage.CompletionTokens:
			return fmt.Errorf("%s: inconsistent streamed usage %+v", c.name, *run.Usage)
		case run.Usage.PromptTokens != run.WholeUsage.PromptTokens || run.Usage.CompletionTokens != run.WholeUsage.CompletionTokens:
			return fmt.Errorf("%s: streamed usage %+v differs from the whole one %+v", c.name, *run.Usage, *run.WholeUsage)
		}
	}
	if r.Chat.FirstRole != "assistant" {
		return fmt.Errorf("chat: the stream's first delta has role %q, want assistant", r.Chat.FirstRole)
	}
	return nil
}

// NodeClientDir finds testdata/openai-node: $SERVELAB_OPENAI_NODE_DIR, else beside this
// package's source, else under the module root above the working directory. It wraps
// ErrNodeClientUnavailable when none has the openai package installed.
func NodeClientDir() (string, error) {
	var candidates []string
	if dir := os.Getenv(NodeClientDirEnv); dir != "" {
		candidates = append(candidates, dir)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		candidates = append(candidates, filepath.Join(filepath.Dir(file), "testdata", "openai-node"))
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				candidates = append(candidates, filepath.Join(dir, "engine", "server", "testdata", "openai-node"))
				break
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	for _, dir := range candidates {
		if _, err := os.Stat(filepath.Join(dir, "client.mjs")); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai", "package.json")); err != nil {
			return "", fmt.Errorf("%w: the openai npm package is not installed in %s (run `npm ci` there)", ErrNodeClientUnavailable, dir)
		}
		return dir, nil
	}
	return "", fmt.Errorf("%w: engine/server/testdata/openai-node not found (set %s)", ErrNodeClientUnavailable, NodeClientDirEnv)
}

// RunOpenAINodeClient drives the server at baseURL (its root, or its /v1 URL) with the
// official OpenAI Node client (testdata/openai-node/client.mjs, greedy, 16 tokens) and
// returns what the client received; ClientResult.Check judges it. The error wraps
// ErrNodeClientUnavailable when node or the npm package is missing.
func RunOpenAINodeClient(ctx context.Context, baseURL, model, apiKey string) (ClientResult, error) {
	var res ClientResult
	node, err := exec.LookPath("node")
	if err != nil {
		return res, fmt.Errorf("%w: node is not installed (apt-get install nodejs npm)", ErrNodeClientUnavailable)
	}
	dir, err := NodeClientDir()
	if err != nil {
		return res, err
	}
	baseURL = strings.TrimRight(baseURL, "/")
	if !strings.HasSuffix(baseURL, "/v1") {
		baseURL += "/v1"
	}
	cmd := exec.CommandContext(ctx, node, "client.mjs", baseURL, model, apiKey)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return res, fmt.Errorf("node client.mjs: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return res, fmt.Errorf("node client.mjs printed %q: %v", stdout.String(), err)
	}
	return res, nil
}
