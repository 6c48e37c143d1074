package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"servelab/real/router"
	"servelab/sim/latency"
)

// synthTiny writes the tiny preset once per test.
// serveEngine starts an engine from ef in this process and serves it until the test ends.
func serveEngine(t *testing.T, ef engineFlags) *running {
	t.Helper()
	eng, err := ef.start()
	if err != nil {
		t.Fatal(err)
	}
	go eng.server.Serve(eng.listener)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := eng.server.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := eng.close(); err != nil {
			t.Error(err)
		}
	})
	return eng
}

// serveRouter waits until r has a ready endpoint and serves it on loopback until the test
// ends; it returns the router's URL.
func serveRouter(t *testing.T, r *router.Router) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func synthTiny(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tiny")
	if _, err := run(t, "model", "synth", "--preset", "tiny", "--out", dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startEngine serves dir on a free loopback port and stops it (checking that every KV
// block is free) when the test ends.
func startEngine(t *testing.T, dir string) string {
	t.Helper()
	return startKeyedEngine(t, dir, "")
}

// startKeyedEngine is startEngine with --api-key key ("" for none).
func startKeyedEngine(t *testing.T, dir, key string) string {
	t.Helper()
	f := engineFlags{model: dir, host: "127.0.0.1", port: 0, blockSize: 16, prefixCaching: true,
		numBlocksOverride: 256, batchSpec: "vllm", evictSpec: "lru", apiKey: key}
	r, err := f.start()
	if err != nil {
		t.Fatal(err)
	}
	go r.server.Serve(r.listener)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.server.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if st := r.engine.Stats(); st.FreeBlocks != st.NumBlocks {
			t.Errorf("after shutdown %d of %d blocks free", st.FreeBlocks, st.NumBlocks)
		}
	})
	return "http://" + r.listener.Addr().String()
}

func TestEngineServesSynthesisedModel(t *testing.T) {
	url := startEngine(t, synthTiny(t))
	body := `{"model":"tiny","prompt":"The engine answers one token at a time","max_tokens":10,"temperature":0}`
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var whole struct {
		Choices []struct{ Text string }
		Usage   struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	json.NewDecoder(resp.Body).Decode(&whole)
	resp.Body.Close()
	if len(whole.Choices) != 1 || whole.Usage.CompletionTokens != 10 {
		t.Fatalf("response %+v", whole)
	}
	// The same request streamed gives the same text.
	resp, err = http.Post(url+"/v1/completions", "application/json", strings.NewReader(strings.Replace(body, "}", `,"stream":true}`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var text string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c struct{ Choices []struct{ Text string } }
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatal(err)
		}
		for _, ch := range c.Choices {
			text += ch.Text
		}
	}
	if text != whole.Choices[0].Text {
		t.Errorf("streamed %q, whole %q", text, whole.Choices[0].Text)
	}
}

// TestOfficialOpenAIClient drives the engine with the official OpenAI Node client
// (testdata/openai-node, installed by .ci/run with `npm ci`).
func TestOfficialOpenAIClient(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed (.ci/run installs Debian's nodejs and npm)")
	}
	if _, err := os.Stat("testdata/openai-node/node_modules/openai"); err != nil {
		t.Skip("the openai npm package is not installed: run `npm ci` in cmd/servelab/testdata/openai-node")
	}
	url := startEngine(t, synthTiny(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "client.mjs", url+"/v1", "tiny", "unused-key")
	cmd.Dir = "testdata/openai-node"
	out, err := cmd.Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			t.Fatalf("client: %v\n%s", err, exitErr.Stderr)
		}
		t.Fatal(err)
	}
	var got struct {
		ChatText, WholeChatText, ChatFinish, CompletionText string
		ChatChunks                                          int
		ChatUsage, CompletionUsage                          *struct {
			CompletionTokens int `json:"completion_tokens"`
		}
		Models []string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if got.ChatText == "" || got.ChatText != got.WholeChatText || got.ChatChunks < 2 || got.ChatFinish != "length" {
		t.Errorf("chat: streamed %q in %d chunks (finish %q), whole %q", got.ChatText, got.ChatChunks, got.ChatFinish, got.WholeChatText)
	}
	if got.ChatUsage == nil || got.ChatUsage.CompletionTokens != 16 || got.CompletionUsage == nil || got.CompletionUsage.CompletionTokens != 12 {
		t.Errorf("usage: chat %+v, completion %+v", got.ChatUsage, got.CompletionUsage)
	}
	if got.CompletionText == "" || len(got.Models) != 1 || got.Models[0] != "tiny" {
		t.Errorf("completion %q, models %v", got.CompletionText, got.Models)
	}
}

func TestProfileRoundTripsIntoTheSimulator(t *testing.T) {
	dir := synthTiny(t)
	prof := filepath.Join(t.TempDir(), "profile.json")
	if _, err := run(t, "profile", "--model", dir, "--out", prof, "--quick", "--repeats", "1", "--num-gpu-blocks-override", "512"); err != nil {
		t.Fatal(err)
	}
	p, err := latency.LoadProfile(prof)
	if err != nil {
		t.Fatal(err)
	}
	if p.NumGPUBlocks != 512 || p.BlockSize != 16 || p.MaxModelLen != 512 || p.Samples < 6 {
		t.Errorf("profile %+v", p)
	}
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	if _, err := run(t, "trace", "synth", "--requests", "50", "--rate", "20", "--input-mean", "64", "--output-mean", "16", "--seed", "1", "--out", trace); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "sim", "--trace", trace, "--instances", "1", "--latency", "profile:"+prof, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var sum struct {
		Completed int     `json:"completed"`
		MeanTTFT  float64 `json:"mean_ttft_ms"`
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if sum.Completed != 50 || !(sum.MeanTTFT > 0) {
		t.Errorf("simulation on the profile: %s", out)
	}
}

func TestModelConvertLlama2C(t *testing.T) {
	const fixture = "../../../shared/fixtures/llama2c-260k/model.bin"
	if _, err := os.Stat(fixture); err != nil {
		t.Skip("../shared/fixtures/llama2c-260k is absent")
	}
	out := filepath.Join(t.TempDir(), "stories260k")
	if _, err := run(t, "model", "convert", "--from", "llama2c", fixture, "--weights-only", "--out", out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "generation_config.json", "model.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := run(t, "model", "convert", "--from", "gguf", fixture, "--out", out); err == nil {
		t.Error("an unsupported source format was accepted")
	}
}
