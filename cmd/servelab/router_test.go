package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRouterOverRealEngines routes through two real engines with the precise prefix-cache
// scorer fed by their KV events: repeats of a long prompt follow the engine that cached it.
func TestRouterOverRealEngines(t *testing.T) {
	dir := synthTiny(t)
	a, b := startEngine(t, dir), startEngine(t, dir)
	f := routerFlags{endpoints: []string{a, b}, spec: "weighted:precise-prefix=10,queue=1,kv=1,prefix=0",
		scrape: 10 * time.Millisecond, blockSize: 16, model: dir, kvEvents: true, logf: t.Logf}
	routeRepeats(t, f, "")
}

// TestRouterOverKeyedEngines is the test above with engines that want an API key: with
// --engine-api-key the KV events arrive and precise prefix routing works; without it the
// router says why, once per endpoint.
func TestRouterOverKeyedEngines(t *testing.T) {
	dir := synthTiny(t)
	a, b := startKeyedEngine(t, dir, "sesame"), startKeyedEngine(t, dir, "sesame")
	f := routerFlags{endpoints: []string{a, b}, spec: "weighted:precise-prefix=10,queue=1,kv=1,prefix=0",
		scrape: 10 * time.Millisecond, blockSize: 16, model: dir, kvEvents: true, logf: t.Logf,
		engineAPIKey: "sesame", apiKey: "router-key"}
	routeRepeats(t, f, "router-key")

	var mu sync.Mutex
	var logs []string
	f.engineAPIKey, f.apiKey = "", ""
	f.logf = func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logs = append(logs, fmt.Sprintf(format, args...))
	}
	r, err := f.build()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := 0
		for _, l := range logs {
			if strings.Contains(l, "KV events unavailable") && strings.Contains(l, "401") && strings.Contains(l, "--engine-api-key") {
				n++
			}
		}
		all := strings.Join(logs, "\n")
		mu.Unlock()
		if n == 2 {
			break
		}
		if n > 2 || time.Now().After(deadline) {
			t.Fatalf("%d lines on the engines' refused KV events, want one per engine:\n%s", n, all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// routeRepeats sends one long prompt six times through a router built from f (presenting
// key, if any) and checks that every request landed on one engine, where it is cached.
func routeRepeats(t *testing.T, f routerFlags, key string) {
	t.Helper()
	a, b := f.endpoints[0], f.endpoints[1]
	r, err := f.build()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	url := serveRouter(t, r)

	prompt := strings.Repeat("The engine answers one token at a time and keeps its cache. ", 6)
	body := `{"prompt":"` + prompt + `","max_tokens":2,"temperature":0}`
	hashes := r.BlockHashes(context.Background(), "/v1/completions", []byte(body))
	if len(hashes) < 2 {
		t.Fatalf("the prompt is %d blocks", len(hashes))
	}
	// cachedSomewhere: the router's index has an engine holding every block of the prompt.
	cachedSomewhere := func() bool {
		for _, v := range r.Views() {
			if v.Cache != nil && v.Cache.CachedPrefixBlocks(hashes) == len(hashes) {
				return true
			}
		}
		return false
	}
	for i := range 6 {
		req, _ := http.NewRequest("POST", url+"/v1/completions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %s", i, resp.Status)
		}
		// The next request is routed on the engines' KV events: wait until they have
		// reached the router (however loaded the machine), not for a guessed while.
		for deadline := time.Now().Add(30 * time.Second); !cachedSomewhere(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("after request %d the router's index has no engine holding the prompt's %d blocks within 30 s", i, len(hashes))
			}
		}
	}
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// Every request after the first lands where the prompt is cached.
	hitA := strings.Contains(string(metrics), `servelab_router_decisions_total{endpoint="`+a+`"} 6`)
	hitB := strings.Contains(string(metrics), `servelab_router_decisions_total{endpoint="`+b+`"} 6`)
	if !hitA && !hitB {
		t.Errorf("requests were split between the engines:\n%s", metrics)
	}
}
