package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
)

// TestRouterFollowsEngineOverZMQ: an engine publishing its KV events over ZeroMQ as vLLM
// does (--kv-events-config, PUB and replay sockets on loopback) feeds a router subscribed as
// llm-d's indexer subscribes (--kv-events-socket-port, --kv-events-replay-port,
// --kv-events-topic-filter), with no /v1/kv_events: requests served before the router
// started come from the replay socket, later ones live, and with 8 KV blocks prompts evict
// each other, so BlockRemoved is exercised. The router's index, read as the precise prefix
// scorer reads it, must end up holding exactly the blocks the engine caches.
func TestRouterFollowsEngineOverZMQ(t *testing.T) {
	dir := synthTiny(t)
	ef := engineFlags{model: dir, host: "127.0.0.1", port: 0, blockSize: 16, prefixCaching: true,
		numBlocksOverride: 8, maxModelLen: 128, batchSpec: "vllm", evictSpec: "lru",
		kvEventsConfig: `{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:0", "bind": true,
			"replay_endpoint": "tcp://127.0.0.1:0", "topic": "kv@127.0.0.1@tiny"}`}
	eng := serveEngine(t, ef)
	engineURL := "http://" + eng.listener.Addr().String()
	port := func(a net.Addr) int { return a.(*net.TCPAddr).Port }

	words := strings.Fields("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu")
	prompt := func(i int) string {
		var b strings.Builder
		for j := range 14 {
			fmt.Fprintf(&b, "%s %d ", words[(i*7+j*3)%len(words)], i*100+j)
		}
		return b.String()
	}
	complete := func(i int) []byte {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"prompt": prompt(i), "max_tokens": 2, "temperature": 0})
		resp, err := http.Post(engineURL+"/v1/completions", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("prompt %d: %s: %s", i, resp.Status, b)
		}
		return body
	}
	var bodies [][]byte
	for _, i := range []int{0, 1} { // before the router subscribes: replayed
		bodies = append(bodies, complete(i))
	}

	rf := routerFlags{endpoints: []string{engineURL}, spec: "weighted:precise-prefix=1,queue=0,kv=0,prefix=0",
		scrape: 10 * time.Millisecond, blockSize: 16, model: dir, logf: t.Logf}
	rf.zmq.SocketPort, rf.zmq.ReplayPort = port(eng.kvEvents.pub.Addr()), port(eng.kvEvents.pub.ReplayAddr())
	rf.zmq.TopicFilter = "kv@"
	r, err := rf.build()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, i := range []int{2, 0, 3, 4, 1, 5} {
		bodies = append(bodies, complete(i))
	}
	var hashes []uint64
	for _, b := range bodies {
		hashes = append(hashes, r.BlockHashes(context.Background(), "/v1/completions", b)...)
	}

	var want, got map[string][]uint64
	for deadline := time.Now().Add(20 * time.Second); ; {
		want = map[string][]uint64{"GPU": engineMedia(t, engineURL)[""]}
		all := append(slices.Clone(want["GPU"]), hashes...)
		slices.Sort(all)
		all = slices.Compact(all)
		if v, ok := r.Views()[engineURL]; ok && v.Cache != nil {
			got = routerMedia(v.Cache.(serving.TieredPrefixCache), all, []string{"GPU"})
			if cmp.Equal(want, got) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router's index of the engine's cache over ZeroMQ (-engine +router):\n%s", cmp.Diff(want, got))
		}
		time.Sleep(10 * time.Millisecond)
	}
	slices.Sort(hashes)
	hashes = slices.Compact(hashes)
	if len(want["GPU"]) == 0 || len(want["GPU"]) == len(hashes) {
		t.Errorf("the engine caches %d of the prompts' %d blocks: want some cached and some evicted", len(want["GPU"]), len(hashes))
	}
}

// TestRouterZMQEngineRestart: when the engine behind a ZeroMQ subscription restarts on the
// same sockets (its sequence numbers start over and its cache is empty), the router drops
// what it knew of the old engine and follows the new one.
func TestRouterZMQEngineRestart(t *testing.T) {
	dir := synthTiny(t)
	freePort := func() int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
	httpPort, pubPort, replayPort := freePort(), freePort(), freePort()
	start := func() (*running, func()) {
		ef := engineFlags{model: dir, host: "127.0.0.1", port: httpPort, blockSize: 16, prefixCaching: true,
			numBlocksOverride: 16, maxModelLen: 128, batchSpec: "vllm", evictSpec: "lru",
			kvEventsConfig: fmt.Sprintf(`{"enable_kv_cache_events": true, "endpoint": "tcp://127.0.0.1:%d", "bind": true, "replay_endpoint": "tcp://127.0.0.1:%d"}`, pubPort, replayPort)}
		eng, err := ef.start()
		if err != nil {
			t.Fatal(err)
		}
		go eng.server.Serve(eng.listener)
		var once bool
		stop := func() {
			if once {
				return
			}
			once = true
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			eng.server.Shutdown(ctx)
			if err := eng.close(); err != nil {
				t.Error(err)
			}
		}
		t.Cleanup(stop)
		return eng, stop
	}
	_, stop := start()
	engineURL := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	rf := routerFlags{endpoints: []string{engineURL}, spec: "weighted:precise-prefix=1,queue=0,kv=0,prefix=0",
		scrape: 10 * time.Millisecond, blockSize: 16, model: dir, logf: t.Logf}
	rf.zmq.SocketPort, rf.zmq.ReplayPort = pubPort, replayPort
	r, err := rf.build()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// No kept-alive connection may outlive the engine it went to: the restarted engine
	// listens on the same port, and a POST on a dead pooled connection is not retried.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	complete := func(p string) []uint64 {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"prompt": p, "max_tokens": 1})
		resp, err := client.Post(engineURL+"/v1/completions", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s", resp.Status)
		}
		return r.BlockHashes(context.Background(), "/v1/completions", body)
	}
	cached := func(hashes []uint64) int {
		v, ok := r.Views()[engineURL]
		if !ok || v.Cache == nil {
			return -1
		}
		return v.Cache.CachedPrefixBlocks(hashes)
	}
	waitCached := func(what string, hashes []uint64, want int) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); cached(hashes) != want; {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the router's index holds %d of %d blocks, want %d", what, cached(hashes), len(hashes), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	old := complete(strings.Repeat("old prompt ", 8))
	if len(old) < 2 {
		t.Fatalf("prompt of %d blocks", len(old))
	}
	waitCached("before the restart", old, len(old))

	stop()
	start()
	fresh := complete(strings.Repeat("new prompt ", 8))
	waitCached("after the restart, the new engine's prompt", fresh, len(fresh))
	waitCached("after the restart, the old engine's prompt", old, 0)
}
