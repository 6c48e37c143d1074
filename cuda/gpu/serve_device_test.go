package gpu_test

import (
	"servelab/internal/gputest"

	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/cuda/gpu"
	"servelab/engine"
	"servelab/engine/backend"
	"servelab/engine/model"
	"servelab/engine/modelfile"
	"servelab/engine/server"
	"servelab/engine/tokenizer"
	"servelab/policies"
	"servelab/policies/batch"
)

// synthServable writes a preset with a trained BPE tokenizer and a ChatML template,
// as servelab model synth does.
func synthServable(t *testing.T, preset string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "m")
	spec, err := modelfile.Preset(preset)
	if err != nil {
		t.Fatal(err)
	}
	tokJSON, tokCfg, err := tokenizer.Train(tokenizer.DefaultCorpus(), tokenizer.TrainConfig{VocabSize: min(spec.Vocab, 1024), Kind: "byte-level",
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
// (engine/backend with Device "cuda", engine/server) for the 15m preset: a completion, a
// streamed chat, and /server_info naming the device; afterwards every KV block is free.
func TestEngineServesOnGPU(t *testing.T) {
	gputest.Require(t)
	dir := synthServable(t, "15m")
	b, err := backend.Load(backend.Options{Dir: dir, Device: "cuda", DType: "float32", NumBlocks: 128, MaxNumBatchedTokens: 512, MaxNumSeqs: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	url, eng := serve(t, b, b.NewExecutor())
	name := checkServes(t, url, eng, "cuda")
	t.Logf("served on %s", name)
}

// fakeExecutor is engine/backend's GPU executor over a backend on the fake or the
// emulated device.
type fakeExecutor struct {
	g      *gpu.Backend
	inputs []model.SeqInput
}

func (x *fakeExecutor) Execute(batch []engine.Input) [][]float32 {
	out, err := x.ExecuteErr(batch)
	if err != nil {
		panic(err)
	}
	return out
}

func (x *fakeExecutor) ExecuteErr(batch []engine.Input) ([][]float32, error) {
	x.convert(batch)
	return x.g.Forward(x.inputs)
}

// ExecuteTokens, as engine/backend's, has the engine take greedy requests' tokens from
// the device: checkServes' completion (temperature 0) goes that way, its chat (the
// default temperature 1) through the logits.
func (x *fakeExecutor) ExecuteTokens(batch []engine.Input) ([][]float32, []int32, error) {
	x.convert(batch)
	return x.g.ForwardTokens(x.inputs)
}

func (x *fakeExecutor) convert(batch []engine.Input) {
	x.inputs = x.inputs[:0]
	for _, in := range batch {
		x.inputs = append(x.inputs, model.SeqInput(in))
	}
}

// TestFakeEngineServes is TestEngineServesOnGPU on the fake device (tiny preset), and
// then a device failure: the running request ends with finish reason "abort", its KV
// blocks are freed, the engine keeps answering (each later request aborted), and nothing
// crashes.
func TestFakeEngineServes(t *testing.T) {
	dir := synthServable(t, "tiny")
	g, arm, err := gpu.LoadFake(gpu.Options{Dir: dir, NumBlocks: 128, MaxNumBatchedTokens: 64, MaxNumSeqs: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	url, eng := serveBackend(t, dir, g)
	checkServes(t, url, eng, "cuda")

	arm("launch", 40) // a kernel faults a few steps into the next request
	for range 2 {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"Once upon a time","max_tokens":24,"ignore_eos":true}`))
		if err != nil {
			t.Fatal(err)
		}
		var comp struct {
			Choices []struct {
				FinishReason string `json:"finish_reason"`
			} `json:"choices"`
		}
		json.NewDecoder(resp.Body).Decode(&comp)
		resp.Body.Close()
		if len(comp.Choices) != 1 || comp.Choices[0].FinishReason != "abort" {
			t.Errorf("completion on a failed device: %d %+v; want finish reason abort", resp.StatusCode, comp)
		}
		waitFree(t, eng)
	}
	if g.Err() == nil {
		t.Error("the backend did not keep the device error")
	}
}

// TestEmulatedEngineServes is TestEngineServesOnGPU with kernels.cu emulated on the CPU
// (cuda/kernels/emu) under the backend and engine/backend's executor shape, for the tiny
// preset: a completion and a streamed chat through the OpenAI API, /server_info, every KV
// block free afterwards. It skips without a C++ compiler, except under CI=true.
func TestEmulatedEngineServes(t *testing.T) {
	dir := synthServable(t, "tiny")
	g, err := gpu.LoadEmulated(t, gpu.Options{Dir: dir, NumBlocks: 128, MaxNumBatchedTokens: 64, MaxNumSeqs: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	url, eng := serveBackend(t, dir, g)
	name := checkServes(t, url, eng, "cuda")
	t.Logf("served on %s", name)
}

// serveBackend serves g (a backend on the fake or the emulated device) as engine/backend
// serves a GPU backend, with dir's tokenizer.
func serveBackend(t *testing.T, dir string, g *gpu.Backend) (string, *engine.Engine) {
	t.Helper()
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	info := g.Info()
	b := &backend.Backend{Config: g.Config(), Cache: g, Tokenizer: tok, BlockSize: g.BlockSize(), NumBlocks: g.NumBlocks(),
		MaxModelLen: g.Config().MaxPos, Device: backend.DeviceInfo{Device: "cuda", Name: info.Device, DType: info.DType}}
	return serve(t, b, &fakeExecutor{g: g})
}

// serve starts the engine over exec and the OpenAI server on a loopback port.
func serve(t *testing.T, b *backend.Backend, exec engine.Executor) (string, *engine.Engine) {
	t.Helper()
	bp, _, err := batch.Registry.Parse("vllm:max_num_seqs=16,max_num_batched_tokens=64", policies.Env{BlockSize: b.BlockSize})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	eng, err := engine.New(engine.Config{
		ModelName: "m", Executor: exec, NewDecoder: b.NewDecoder, EOS: b.EOS(),
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
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return "http://" + ln.Addr().String(), eng
}

// waitFree polls until every KV block is free and no request is left.
func waitFree(t *testing.T, eng *engine.Engine) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := eng.Stats()
		if st.FreeBlocks == st.NumBlocks && st.Running+st.Waiting == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("KV blocks not back to free: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkServes sends a completion and a streamed chat, checks /server_info's device and
// that every KV block is free afterwards; it returns the device's name.
func checkServes(t *testing.T, url string, eng *engine.Engine, device string) string {
	t.Helper()
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
	if info.Device.Device != device || info.Device.Name == "" || info.Device.DType != "float32" {
		t.Errorf("/server_info device: %+v; want %s", info.Device, device)
	}
	waitFree(t, eng)
	return info.Device.Name
}
