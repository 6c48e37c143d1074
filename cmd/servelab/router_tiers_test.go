package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/policies/route"
	"servelab/real/router"
	"servelab/serving"
)

// viewRecorder is a routing policy that keeps what the router hands its policy: the
// request's block hashes and the endpoints' cache views.
type viewRecorder struct {
	route.Policy
	mu     sync.Mutex
	hashes [][]uint64
	cache  serving.PrefixCache
}

func (p *viewRecorder) Route(req *serving.Request, views []serving.InstanceView) int {
	p.mu.Lock()
	p.hashes = append(p.hashes, slices.Clone(req.BlockHashes))
	p.cache = views[0].Cache
	p.mu.Unlock()
	return p.Policy.Route(req, views)
}

// engineMedia reads a fresh /v1/kv_events subscription's snapshot from the engine at url:
// every hash it caches, by medium (one BlockStored per tier).
func engineMedia(t *testing.T, url string) map[string][]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/kv_events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var batch struct {
			Events []struct {
				Type   string   `json:"type"`
				Hashes []uint64 `json:"block_hashes"`
				Medium string   `json:"medium"`
			} `json:"events"`
		}
		if err := json.Unmarshal([]byte(data), &batch); err != nil {
			t.Fatalf("snapshot %q: %v", data, err)
		}
		out := map[string][]uint64{}
		for _, ev := range batch.Events {
			if ev.Type == "BlockStored" && len(ev.Hashes) > 0 {
				out[ev.Medium] = append(out[ev.Medium], ev.Hashes...)
			}
		}
		for _, hs := range out {
			slices.Sort(hs)
		}
		return out
	}
	t.Fatalf("no snapshot from %s/v1/kv_events: %v", url, sc.Err())
	return nil
}

// routerMedia asks the router's view of the engine's cache, through the interface the
// precise prefix scorer uses, which medium holds each of hashes: a weight of 1 for the
// medium asked and 0 for the others tells whether the block is on it.
func routerMedia(c serving.TieredPrefixCache, hashes []uint64, media []string) map[string][]uint64 {
	out := map[string][]uint64{}
	for _, h := range hashes {
		for _, m := range media {
			if c.CachedPrefixWeight([]uint64{h}, func(n string) float64 {
				if n == m {
					return 1
				}
				return 0
			}) == 1 {
				out[m] = append(out[m], h)
			}
		}
	}
	for _, hs := range out {
		slices.Sort(hs)
	}
	return out
}

// TestRouterKnowsEngineTiers routes prompts through the router to a real engine with a
// GPU cache of 8 blocks, a CPU tier of 4 and a disk tier under it, so blocks are offloaded
// down both tiers and loaded back. The router's KV-event view of the engine's cache, read
// through serving.TieredPrefixCache as the precise prefix scorer reads it, must then hold
// every block on the medium the engine's own snapshot puts it on, and no block the engine
// no longer has.
func TestRouterKnowsEngineTiers(t *testing.T) {
	dir := synthTiny(t)
	ef := engineFlags{model: dir, host: "127.0.0.1", port: 0, blockSize: 16, prefixCaching: true,
		numBlocksOverride: 8, maxModelLen: 128, batchSpec: "vllm", evictSpec: "lru",
		tiers: tierFlags{specs: []string{"cpu:4:lru", "disk:64:fifo"}, dir: t.TempDir()}}
	eng := serveEngine(t, ef)
	engineURL := "http://" + eng.listener.Addr().String()

	rf := routerFlags{endpoints: []string{engineURL}, spec: "weighted:precise-prefix=1,queue=0,kv=0,prefix=0",
		scrape: 10 * time.Millisecond, blockSize: 16, model: dir, kvEvents: true, logf: t.Logf}
	cfg, err := rf.config()
	if err != nil {
		t.Fatal(err)
	}
	rec := &viewRecorder{Policy: cfg.Policy}
	cfg.Policy = rec
	r, err := router.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	routerURL := serveRouter(t, r)

	words := strings.Fields("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu")
	prompt := func(i int) string {
		var b strings.Builder
		for j := range 14 {
			fmt.Fprintf(&b, "%s %d ", words[(i*7+j*3)%len(words)], i*100+j)
		}
		return b.String()
	}
	for _, i := range []int{0, 1, 0, 2, 3, 4, 0, 1, 2, 5} {
		body, _ := json.Marshal(map[string]any{"prompt": prompt(i), "max_tokens": 2, "temperature": 0})
		resp, err := http.Post(routerURL+"/v1/completions", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("prompt %d: %s: %s", i, resp.Status, b)
		}
	}

	rec.mu.Lock()
	cache := rec.cache
	var hashes []uint64
	for _, hs := range rec.hashes {
		hashes = append(hashes, hs...)
	}
	rec.mu.Unlock()
	slices.Sort(hashes)
	hashes = slices.Compact(hashes)
	tiered, ok := cache.(serving.TieredPrefixCache)
	if !ok {
		t.Fatalf("the router's view of the engine's cache (%T) does not know tiers (serving.TieredPrefixCache)", cache)
	}
	// The router applies the engine's events shortly after each step; poll until its view
	// agrees with the engine's snapshot.
	var want, got map[string][]uint64
	for deadline := time.Now().Add(10 * time.Second); ; {
		want = engineMedia(t, engineURL)
		var all []uint64
		for _, hs := range want {
			all = append(all, hs...)
		}
		// Every hash the engine caches, and every prompt block hash the router saw (those
		// the engine dropped must be on no medium).
		all = append(all, hashes...)
		slices.Sort(all)
		got = routerMedia(tiered, slices.Compact(all), []string{"GPU", "CPU", "DISK"})
		if cmp.Equal(want, got) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router's view of the engine's tiers (-engine +router):\n%s", cmp.Diff(want, got))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, m := range []string{"GPU", "CPU", "DISK"} {
		if len(want[m]) == 0 {
			t.Errorf("the engine holds no block on %s: the prompts did not exercise that tier (%v)", m, want)
		}
	}
	for _, m := range []string{"CPU", "DISK"} {
		for _, h := range want[m] {
			if n := tiered.CachedPrefixBlocks([]uint64{h}); n != 1 {
				t.Errorf("block %d on %s: the router's CachedPrefixBlocks = %d, want 1", h, m, n)
			}
		}
	}
	t.Logf("engine and router agree: %d blocks on GPU, %d on CPU, %d on disk", len(want["GPU"]), len(want["CPU"]), len(want["DISK"]))
}
