package router

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
)

// llmdWeight is llm-d-kv-cache's default medium weights (pkg/kvcache/backend.go
// DefaultKVCacheBackendConfig): gpu 1.0, cpu 0.8; a medium it does not list weighs 1.0.
func llmdWeight(m string) float64 {
	if strings.EqualFold(m, "cpu") {
		return 0.8
	}
	return 1
}

// TestKVEventsWeighByMedium: the endpoint's prefix index, fed /v1/kv_events batches as the
// engine writes them, remembers each block's medium as llm-d-kv-cache's index does, and
// its view is a serving.TieredPrefixCache answering the weights the precise prefix scorer
// sums for the prompt [1 2 3].
func TestKVEventsWeighByMedium(t *testing.T) {
	prompt := []uint64{1, 2, 3}
	for _, tc := range []struct {
		name    string
		batches []string // the events arrays of consecutive batches
		blocks  int
		weight  float64
	}{
		{"stored without a medium is the GPU",
			[]string{`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1,2,3]}]`},
			3, 3},
		{"stored on GPU",
			[]string{`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1,2,3],"medium":"GPU"}]`},
			3, 3},
		{"offloaded: removed from GPU, stored on CPU, weighs 0.8",
			[]string{
				`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1,2,3],"medium":"GPU"}]`,
				`[{"type":"BlockRemoved","block_hashes":[2,3],"medium":"GPU"},{"type":"BlockStored","block_hashes":[2,3],"medium":"CPU"}]`},
			3, 1 + 0.8 + 0.8},
		{"removed from CPU, its last tier: forgotten",
			[]string{
				`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1,2,3],"medium":"GPU"}]`,
				`[{"type":"BlockRemoved","block_hashes":[2,3],"medium":"GPU"},{"type":"BlockStored","block_hashes":[2,3],"medium":"CPU"}]`,
				`[{"type":"BlockRemoved","block_hashes":[2],"medium":"CPU"}]`},
			1, 1},
		{"stored on both: the greater weight; removed from GPU: CPU's",
			[]string{
				`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1,2,3],"medium":"GPU"},{"type":"BlockStored","block_hashes":[1,2,3],"medium":"CPU"}]`,
				`[{"type":"BlockRemoved","block_hashes":[3],"medium":"GPU"}]`},
			3, 1 + 1 + 0.8},
		{"a new subscriber's snapshot: one BlockStored per tier",
			[]string{`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1],"medium":"GPU"},{"type":"BlockStored","block_hashes":[2],"medium":"CPU"},{"type":"BlockStored","block_hashes":[3],"medium":"DISK"}]`},
			3, 1 + 0.8 + 1},
		{"AllBlocksCleared forgets every tier",
			[]string{
				`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1],"medium":"GPU"},{"type":"BlockStored","block_hashes":[2,3],"medium":"CPU"}]`,
				`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[2,3],"medium":"CPU"}]`},
			0, 0},
		{"vLLM's null medium is the GPU",
			[]string{`[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1,2],"medium":null},{"type":"BlockRemoved","block_hashes":[2],"medium":"GPU"}]`},
			1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &endpoint{logf: t.Logf}
			for i, events := range tc.batches {
				var b kvEventBatch
				if err := json.Unmarshal(fmt.Appendf(nil, `{"seq":%d,"events":%s}`, i+1, events), &b); err != nil {
					t.Fatal(err)
				}
				if err := e.apply(b.Events); err != nil {
					t.Fatal(err)
				}
			}
			c, ok := e.view().Cache.(serving.TieredPrefixCache)
			if !ok {
				t.Fatalf("the view's cache %T is not a serving.TieredPrefixCache", e.view().Cache)
			}
			if got := c.CachedPrefixBlocks(prompt); got != tc.blocks {
				t.Errorf("CachedPrefixBlocks = %d, want %d", got, tc.blocks)
			}
			if got := c.CachedPrefixWeight(prompt, llmdWeight); got < tc.weight-1e-9 || got > tc.weight+1e-9 {
				t.Errorf("CachedPrefixWeight = %g, want %g", got, tc.weight)
			}
		})
	}
}

// kvEventsStub is an engine whose /v1/kv_events snapshot is events.
func kvEventsStub(t *testing.T, events string) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0.1\n")
	})
	mux.HandleFunc("/v1/kv_events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: {\"seq\":1,\"events\":%s}\n\n", events)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s.URL
}

// TestPreciseScorerWeighsTiers: llm-d's precise prefix scorer, routing in the real router,
// prefers 5 leading blocks on an endpoint's GPU (5 x 1.0) to 6 on another's CPU (6 x 0.8),
// which a count of blocks would prefer.
func TestPreciseScorerWeighsTiers(t *testing.T) {
	cpu := kvEventsStub(t, `[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1,2,3,4,5,6],"medium":"CPU"}]`)
	gpu := kvEventsStub(t, `[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[1,2,3,4,5],"medium":"GPU"}]`)
	p, err := route.Parse("weighted:precise-prefix=1,queue=0,kv=0,prefix=0", policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Endpoints: []string{cpu, gpu}, Policy: p, KVEvents: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	for deadline := time.Now().Add(10 * time.Second); ; {
		ready := true
		for _, e := range r.endpoints {
			if !e.healthy() || e.view().Cache == nil || e.view().Cache.CachedPrefixBlocks([]uint64{1}) == 0 {
				ready = false
			}
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the endpoints were not up with their KV-event snapshots within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	req := &serving.Request{BlockHashes: []uint64{1, 2, 3, 4, 5, 6, 7}}
	for range 5 {
		if e := r.pick(req, nil); e.url != gpu {
			t.Fatalf("routed to %s (6 blocks on CPU), want %s (5 on GPU)", e.url, gpu)
		}
	}
}
