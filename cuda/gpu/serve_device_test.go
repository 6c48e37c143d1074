package gpu_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/cuda/driver"
	"servelab/cuda/gpu"
	"servelab/engine"
	"servelab/engine/backend"
	"servelab/engine/modelfile"
	"servelab/engine/server"
	"servelab/engine/tokenizer"
	"servelab/policies"
	"servelab/policies/batch"
)

// requireGPU is the internal tests' requireGPU (device_test.go), for this package.
func requireGPU(t *testing.T) {
	t.Helper()
	required := os.Getenv("SERVELAB_REQUIRE_GPU") == "1"
	_, err := driver.Load()
	switch {
	case err == nil && gpu.GPUPresent():
	case required:
		t.Fatalf("SERVELAB_REQUIRE_GPU=1 but no GPU: driver %v, /dev/nvidiactl present %t", err, gpu.GPUPresent())
	case errors.Is(err, driver.ErrNoDriver):
		t.Skipf("no GPU: %v (SERVELAB_REQUIRE_GPU=1 makes this a failure)", err)
	default:
		t.Skipf("no GPU: /dev/nvidiactl does not exist (SERVELAB_REQUIRE_GPU=1 makes this a failure)")
	}
}

// synthServable writes the 15m preset with a trained BPE tokenizer and a ChatML template,
// as servelab model synth does.
func synthServable(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "m")
	spec, err := modelfile.Preset("15m")
	if err != nil {
		t.Fatal(err)
	}
	tokJSON, tokCfg, err := tokenizer.Train(tokenizer.DefaultCorpus(), tokenizer.TrainConfig{VocabSize: 1024, Kind: "byte-level",
		Special: []string{"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Parse(tokJSON, tokCfg)
	if err != nil {
		t.Fatal(err)
	}
	if bos, ok := tok.BOS(); ok {
		spec.BOS = int(bos)
	}
	if eos := tok.EOS(); len(eos) > 0 {
		spec.EOS = int(eos[0])
	}
	if err := modelfile.Write(dir, spec, modelfile.RandomWeights(spec, 1)); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{}
	if len(tokCfg) > 0 {
		if err := json.Unmarshal(tokCfg, &cfg); err != nil {
			t.Fatal(err)
		}
	}
	cfg["chat_template"] = `{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}`
	tokCfg, _ = json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tokJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), tokCfg, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestEngineServesOnGPU serves the OpenAI API from the engine on the CUDA backend
// (engine/backend with Device "cuda", engine/server): a completion, a streamed chat, and
// /server_info naming the device; afterwards every KV block is free again.
func TestEngineServesOnGPU(t *testing.T) {
	requireGPU(t)
	dir := synthServable(t)
	b, err := backend.Load(backend.Options{Dir: dir, Device: "cuda", DType: "float32", NumBlocks: 128, MaxNumBatchedTokens: 512, MaxNumSeqs: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	bp, _, err := batch.Registry.Parse("vllm:max_num_seqs=16,max_num_batched_tokens=512", policies.Env{BlockSize: b.BlockSize})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	eng, err := engine.New(engine.Config{
		ModelName: "m", Executor: b.NewExecutor(), NewDecoder: b.NewDecoder, EOS: b.EOS(),
		MaxModelLen: b.MaxModelLen, VocabSize: b.Config.Vocab, NumBlocks: b.NumBlocks, BlockSize: b.BlockSize,
		EnablePrefixCaching: true, Batch: bp, Metrics: engine.NewMetrics(reg, "m", b.MaxModelLen),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Device: &b.Device, Engine: eng, Tokenizer: b.ServerTokenizer(), ModelName: "m", MaxModelLen: b.MaxModelLen, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	url := "http://" + ln.Addr().String()
	post := func(path, body string) *http.Response {
		t.Helper()
		resp, err := http.Post(url+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %s", path, resp.Status)
		}
		return resp
	}

	resp := post("/v1/completions", `{"model":"m","prompt":"Once upon a time there was a little dog","max_tokens":24,"temperature":0,"ignore_eos":true}`)
	var comp struct {
		Choices []struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&comp); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(comp.Choices) != 1 || comp.Choices[0].FinishReason != "length" || comp.Usage.CompletionTokens != 24 {
		t.Fatalf("completion: %+v; want 24 tokens, finish length", comp)
	}

	resp = post("/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":16,"stream":true,"ignore_eos":true}`)
	chunks, done := 0, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "data: [DONE]" {
			done = true
			break
		}
		if strings.HasPrefix(line, "data: ") {
			chunks++
		}
	}
	resp.Body.Close()
	if !done || chunks < 2 {
		t.Fatalf("streamed chat: %d chunks, [DONE] %t", chunks, done)
	}

	r, err := http.Get(url + "/server_info")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Device backend.DeviceInfo `json:"device"`
	}
	json.NewDecoder(r.Body).Decode(&info)
	r.Body.Close()
	if info.Device.Device != "cuda" || info.Device.Name == "" || info.Device.DType != "float32" {
		t.Errorf("/server_info device: %+v", info.Device)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := eng.Stats()
		if st.FreeBlocks == st.NumBlocks && st.Running+st.Waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("KV blocks not back to free: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("served on %s: completion %q", info.Device.Name, comp.Choices[0].Text)
}
