package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pdPrompt is long enough for several full 16-token blocks of the tiny model.
const pdPrompt = "Once upon a time there was a little engine that computed the prompt, and another engine far away that continued the story one token at a time, reading what the first had left"

// startRoleEngine serves dir in-process with the given role; mod adjusts the flags. It
// checks at the end that every block is free and none held.
func startRoleEngine(t *testing.T, dir, role string, mod func(*engineFlags)) (*running, string) {
	t.Helper()
	f := engineFlags{model: dir, host: "127.0.0.1", port: 0, blockSize: 16, prefixCaching: true,
		numBlocksOverride: 64, batchSpec: "vllm", evictSpec: "lru", threads: 1, role: role}
	if mod != nil {
		mod(&f)
	}
	r, err := f.start()
	if err != nil {
		t.Fatal(err)
	}
	go r.server.Serve(r.listener)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.server.Shutdown(ctx)
		if st := r.engine.Stats(); st.FreeBlocks != st.NumBlocks || st.KVHeldBlocks != 0 {
			t.Errorf("%s engine after shutdown: %d of %d blocks free, %d held", role, st.FreeBlocks, st.NumBlocks, st.KVHeldBlocks)
		}
	})
	return r, "http://" + r.listener.Addr().String()
}

type pdCompletion struct {
	Choices []struct {
		Text     string  `json:"text"`
		TokenIDs []int32 `json:"token_ids"`
	} `json:"choices"`
	Usage struct {
		PromptTokens        int `json:"prompt_tokens"`
		PromptTokensDetails struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
	KVTransferParams json.RawMessage `json:"kv_transfer_params"`
}

func postJSON(t *testing.T, url, body string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, data
}

func decodeCompletion(t *testing.T, data []byte) pdCompletion {
	t.Helper()
	var c pdCompletion
	if err := json.Unmarshal(data, &c); err != nil || len(c.Choices) != 1 {
		t.Fatalf("response %s", data)
	}
	return c
}

const pdPrefillParams = `"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`

// pdPrefill runs the prefill leg on url and returns the kv_transfer_params it answered.
func pdPrefill(t *testing.T, url string) json.RawMessage {
	t.Helper()
	code, _, data := postJSON(t, url, fmt.Sprintf(`{"prompt":%q,"max_tokens":1,"temperature":0,%s}`, pdPrompt, pdPrefillParams))
	c := decodeCompletion(t, data)
	if code != http.StatusOK || len(c.KVTransferParams) == 0 || string(c.KVTransferParams) == "null" {
		t.Fatalf("prefill: %d %s", code, data)
	}
	return c.KVTransferParams
}

// TestPDRealEnginesMoveKV: a decode engine continuing from a prefill engine's KV (the tiny
// model, real forward passes) generates exactly what one engine generates from the whole
// prompt: the KV moved, since the decode engine computes only the prompt's last token. The
// tiny model's random weights make greedy decoding repeat one token whatever the context,
// so the tokens are sampled with a fixed seed: any change in the logits (blocks that did
// not arrive, or arrived wrong) changes them.
func TestPDRealEnginesMoveKV(t *testing.T) {
	dir := synthTiny(t)
	// The prefill engine runs without prefix caching: its hold must not depend on it.
	prefillEng, purl := startRoleEngine(t, dir, "prefill", func(f *engineFlags) { f.prefixCaching = false })
	decodeEng, durl := startRoleEngine(t, dir, "decode", nil)
	const req = `"max_tokens":24,"temperature":1,"seed":7,"ignore_eos":true,"return_token_ids":true`
	// One engine, the whole prompt (on the prefill engine, whose role serves plain requests).
	code, _, data := postJSON(t, purl, fmt.Sprintf(`{"prompt":%q,%s}`, pdPrompt, req))
	if code != http.StatusOK {
		t.Fatalf("one engine: %d %s", code, data)
	}
	want := decodeCompletion(t, data)
	params := pdPrefill(t, purl)
	var kv struct {
		RemoteBlockIDs []int32 `json:"remote_block_ids"`
	}
	json.Unmarshal(params, &kv)
	full := want.Usage.PromptTokens / 16
	if full < 2 || len(kv.RemoteBlockIDs) != full {
		t.Fatalf("prompt of %d tokens: %d remote blocks, want %d (>= 2)", want.Usage.PromptTokens, len(kv.RemoteBlockIDs), full)
	}
	if held := prefillEng.engine.Stats().KVHeldBlocks; held != full {
		t.Fatalf("prefill engine holds %d blocks, want %d", held, full)
	}
	code, _, data = postJSON(t, durl, fmt.Sprintf(`{"prompt":%q,%s,"kv_transfer_params":%s}`, pdPrompt, req, params))
	if code != http.StatusOK {
		t.Fatalf("decode: %d %s", code, data)
	}
	got := decodeCompletion(t, data)
	t.Logf("one engine %v, disaggregated %v, usage %+v", want.Choices[0].TokenIDs, got.Choices[0].TokenIDs, got.Usage)
	if diff := cmp.Diff(want.Choices[0].TokenIDs, got.Choices[0].TokenIDs); diff != "" {
		t.Errorf("seeded sampled tokens (-one engine +prefill then decode):\n%s", diff)
	}
	if c := got.Usage.PromptTokensDetails.CachedTokens; c != min(full*16, want.Usage.PromptTokens-1) {
		t.Errorf("decode engine reports %d cached (transferred) prompt tokens, want %d", c, full*16)
	}
	waitFor(t, "the prefill engine frees the pulled blocks", 10*time.Second, func() bool {
		st := prefillEng.engine.Stats()
		return st.KVHeldBlocks == 0 && st.FreeBlocks == st.NumBlocks
	}, &syncBuffer{})
	waitFor(t, "the decode engine frees its blocks", 10*time.Second, func() bool {
		st := decodeEng.engine.Stats()
		return st.FreeBlocks == st.NumBlocks
	}, &syncBuffer{})
	if metric := metricSum(t, purl, "servelab:kv_transfer_held_blocks", ""); metric != 0 {
		t.Errorf("servelab:kv_transfer_held_blocks = %v after the pull", metric)
	}
}

// startEngineProcess runs `servelab engine` as a process (this test binary) and returns its
// URL and output.
func startEngineProcess(t *testing.T, args ...string) (*exec.Cmd, string, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"engine", "--port", "0", "--threads", "1", "--num-gpu-blocks-override", "64"}, args...)...)
	cmd.Env = append(os.Environ(), "SERVELAB_RUN_MAIN=1")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var url string
	waitFor(t, "the engine process listening", 60*time.Second, func() bool {
		m := regexp.MustCompile(`listening on (http://\S+)`).FindStringSubmatch(out.String())
		if m != nil {
			url = m[1]
		}
		return m != nil
	}, out)
	return cmd, url, out
}

// TestPDPrefillKilledMidTransfer: the prefill engine process dies (SIGKILL) after sending
// one block of a pull: the decode engine answers 503 with x-servelab-retry: kv-pull and
// every block it took comes free.
func TestPDPrefillKilledMidTransfer(t *testing.T) {
	dir := synthTiny(t)
	cmd, purl, out := startEngineProcess(t, "--model", dir, "--role", "prefill", "--kv-transfer-test-pause-after", "1")
	decodeEng, durl := startRoleEngine(t, dir, "decode", nil)
	params := pdPrefill(t, purl)
	type result struct {
		code   int
		header http.Header
		data   []byte
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Post(durl+"/v1/completions", "application/json",
			strings.NewReader(fmt.Sprintf(`{"prompt":%q,"max_tokens":8,"stream":true,"kv_transfer_params":%s}`, pdPrompt, params)))
		if err != nil {
			done <- result{data: []byte(err.Error())}
			return
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, resp.Header, data}
	}()
	waitFor(t, "the pull paused after one block", 30*time.Second, func() bool {
		return strings.Contains(out.String(), "paused after 1 of")
	}, out)
	if st := decodeEng.engine.Stats(); st.FreeBlocks == st.NumBlocks {
		// Published after the allocation's loop iteration; the fetch is under way.
		waitFor(t, "the decode engine's blocks for the pull", 10*time.Second, func() bool {
			st := decodeEng.engine.Stats()
			return st.FreeBlocks < st.NumBlocks
		}, out)
	}
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.code != http.StatusServiceUnavailable || r.header.Get("x-servelab-retry") != "kv-pull" ||
		!strings.Contains(string(r.data), "the remote prefill's KV could not be fetched") {
		t.Fatalf("decode after the prefill engine died: %d %v %s", r.code, r.header, r.data)
	}
	waitFor(t, "the decode engine's blocks back to zero", 10*time.Second, func() bool {
		st := decodeEng.engine.Stats()
		return st.FreeBlocks == st.NumBlocks && st.Running+st.Waiting == 0
	}, out)
}

// TestPDDecodeGone: the prefill engine's held blocks come free when the decode engine
// process dies mid-pull (SIGKILL), and when nobody pulls them within --kv-transfer-timeout.
func TestPDDecodeGone(t *testing.T) {
	dir := synthTiny(t)
	paused := make(chan struct{}, 1)
	prefillEng, purl := startRoleEngine(t, dir, "prefill", func(f *engineFlags) {
		f.kvTestPause = 1
		f.kvOnPause = func(string, int, int) { paused <- struct{}{} }
		f.kvTransferTimeout = time.Hour
	})
	cmd, durl, out := startEngineProcess(t, "--model", dir, "--role", "decode")
	params := pdPrefill(t, purl)
	if prefillEng.engine.Stats().KVHeldBlocks == 0 {
		t.Fatal("the prefill engine holds no blocks")
	}
	go func() {
		resp, err := http.Post(durl+"/v1/completions", "application/json",
			strings.NewReader(fmt.Sprintf(`{"prompt":%q,"max_tokens":8,"kv_transfer_params":%s}`, pdPrompt, params)))
		if err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-paused:
	case <-time.After(60 * time.Second):
		t.Fatalf("the pull never started; decode engine output:\n%s", out)
	}
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the prefill engine's held blocks back to zero", 10*time.Second, func() bool {
		st := prefillEng.engine.Stats()
		return st.KVHeldBlocks == 0 && st.FreeBlocks == st.NumBlocks
	}, out)

	// Nobody pulls: a short --kv-transfer-timeout frees the hold.
	lonely, lurl := startRoleEngine(t, dir, "prefill", func(f *engineFlags) { f.kvTransferTimeout = 200 * time.Millisecond })
	pdPrefill(t, lurl)
	waitFor(t, "the unclaimed hold freed after --kv-transfer-timeout", 10*time.Second, func() bool {
		st := lonely.engine.Stats()
		return st.KVHeldBlocks == 0 && st.FreeBlocks == st.NumBlocks
	}, &syncBuffer{})
}
