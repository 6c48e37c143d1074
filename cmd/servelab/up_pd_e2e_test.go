package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestUpPDEndToEnd runs the real router in P/D mode in front of real engines, as `servelab
// up --prefill-engines 1 --engines 2 --router examples/router/llm-d-pd.yaml` starts them:
// prompts with at least nonCachedTokens uncached tokens go prefill then decode (the router's
// llm-d decision counter and the engines' servelab:kv_transfer_* metrics say so), a short
// prompt goes to a decode engine alone, every answer (streamed or not) is what one engine
// answers for the same seed, and afterwards no engine holds or uses a KV block.
func TestUpPDEndToEnd(t *testing.T) {
	dir := synthTiny(t)
	url, out, stop := startUpOut(t, "--prefill-engines", "1", "--engines", "2", "--model", dir,
		"--router", "../../examples/router/llm-d-pd.yaml", "--num-gpu-blocks-override", "64", "--threads", "1")
	var engines []string
	roles := map[string]string{}
	for _, m := range regexp.MustCompile(`engine-\d+\s+(http://127\.0\.0\.1:\d+)\s+(prefill|decode)\s`).FindAllStringSubmatch(out.String(), -1) {
		engines = append(engines, m[1])
		roles[m[1]] = m[2]
	}
	if len(engines) != 3 {
		t.Fatalf("servelab up does not list 1 prefill and 2 decode engines:\n%s", out)
	}
	// One engine, the reference: what each prompt gives served whole, with the same seed.
	_, ref := startRoleEngine(t, dir, "both", nil)

	// min_tokens as servelab bench sends it: the prefill leg must not pass it above its one token.
	const sampling = `"max_tokens":12,"min_tokens":12,"temperature":1,"seed":11,"ignore_eos":true`
	long := []string{"Yesterday " + pdPrompt, "In a faraway kingdom " + pdPrompt, "The last time the engines met, " + pdPrompt}
	type request struct {
		prompt string
		stream bool
	}
	reqs := []request{{long[0], false}, {long[1], true}, {long[2], false}, {"Once upon", false}}
	want := make([]string, len(reqs))
	wantBlocks := 0
	for i, r := range reqs {
		code, _, data := postJSON(t, ref, fmt.Sprintf(`{"prompt":%q,%s}`, r.prompt, sampling))
		if code != http.StatusOK {
			t.Fatalf("reference engine: %d %s", code, data)
		}
		c := decodeCompletion(t, data)
		want[i] = c.Choices[0].Text
		if i < len(long) {
			if c.Usage.PromptTokens < 3*16 {
				t.Fatalf("prompt %d has %d tokens; the test wants several blocks", i, c.Usage.PromptTokens)
			}
			wantBlocks += c.Usage.PromptTokens / 16
		} else if c.Usage.PromptTokens >= 16 {
			t.Fatalf("the short prompt has %d tokens, not fewer than nonCachedTokens (16)", c.Usage.PromptTokens)
		}
	}

	got := make([]string, len(reqs))
	prefillers := make([]string, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf(`{"prompt":%q,%s,"stream":%v}`, r.prompt, sampling, r.stream)
			resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			prefillers[i] = resp.Header.Get("x-prefiller-host-port")
			if resp.StatusCode != http.StatusOK {
				t.Errorf("request %d through the router: %s", i, resp.Status)
				return
			}
			if !r.stream {
				var c pdCompletion
				if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || len(c.Choices) != 1 {
					t.Errorf("request %d: %v", i, err)
					return
				}
				got[i] = c.Choices[0].Text
				return
			}
			sc := bufio.NewScanner(resp.Body)
			done := false
			for sc.Scan() {
				data, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok {
					continue
				}
				if data == "[DONE]" {
					done = true
					break
				}
				var chunk pdCompletion
				if err := json.Unmarshal([]byte(data), &chunk); err != nil {
					t.Errorf("request %d: chunk %q: %v", i, data, err)
					return
				}
				for _, ch := range chunk.Choices {
					got[i] += ch.Text
				}
			}
			if !done {
				t.Errorf("request %d: the stream ended without [DONE]: %v", i, sc.Err())
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.Fatalf("servelab up:\n%s", out)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers through the P/D cluster (-one engine +prefill then decode):\n%s", diff)
	}
	for i := range long {
		if p := prefillers[i]; p == "" || roles["http://"+p] != "prefill" {
			t.Errorf("request %d: x-prefiller-host-port %q, want the prefill engine", i, p)
		}
	}
	if p := prefillers[len(long)]; p != "" {
		t.Errorf("the short prompt was prefilled remotely on %s", p)
	}

	decisions := func(kind string) float64 {
		return metricSum(t, url, "llm_d_inference_scheduler_disagg_decision_total", `decision_type="`+kind+`"`)
	}
	if pd, d := decisions("prefill-decode"), decisions("decode-only"); pd != float64(len(long)) || d != 1 {
		t.Errorf("router decisions: %v prefill-decode, %v decode-only; want %d and 1", pd, d, len(long))
	}
	if ok := metricSum(t, url, "servelab_router_prefill_legs_total", `outcome="ok"`); ok != float64(len(long)) {
		t.Errorf("servelab_router_prefill_legs_total{outcome=\"ok\"} = %v, want %d", ok, len(long))
	}
	var pulled, pulls, failures float64
	for _, ep := range engines {
		if roles[ep] == "decode" {
			pulled += metricSum(t, ep, "servelab:kv_transfer_pulled_blocks_total", "")
			pulls += metricSum(t, ep, "servelab:kv_transfer_pull_seconds_count", "")
			failures += metricSum(t, ep, "servelab:kv_transfer_pull_failures_total", "")
		}
	}
	t.Logf("answers %q; %v blocks pulled in %v pulls", got, pulled, pulls)
	if pulled != float64(wantBlocks) || pulls != float64(len(long)) || failures != 0 {
		t.Errorf("decode engines pulled %v blocks in %v pulls (%v failed), want %d blocks in %d pulls", pulled, pulls, failures, wantBlocks, len(long))
	}
	for _, ep := range engines {
		waitFor(t, roles[ep]+" engine "+ep+" holds and uses no KV block", 10*time.Second, func() bool {
			return metricSum(t, ep, "servelab:kv_transfer_held_blocks", "") == 0 &&
				metricSum(t, ep, "vllm:kv_cache_usage_perc", "") == 0 &&
				metricSum(t, ep, "vllm:num_requests_running", "")+metricSum(t, ep, "vllm:num_requests_waiting", "") == 0
		}, out)
	}
	if err := stop(); err != nil {
		t.Fatalf("servelab up stopped with %v; output:\n%s", err, out)
	}
}
