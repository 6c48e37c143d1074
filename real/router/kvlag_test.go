package router

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"servelab/policies"
	"servelab/policies/route"
)

// TestKVEventLagMeasured: servelab_router_kv_event_lag_seconds observes, for every batch
// after the subscription's snapshot, the time from the batch's ts (when the engine
// published it, at the end of the step that produced it) to the router having applied it.
// The stub's batch says it was published 250 ms before it is sent.
func TestKVEventLagMeasured(t *testing.T) {
	const back = 250 * time.Millisecond
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n")
	})
	mux.HandleFunc("/v1/kv_events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"seq\":1,\"ts\":1,\"events\":[{\"type\":\"AllBlocksCleared\"},{\"type\":\"BlockStored\",\"block_hashes\":[]}]}\n\n")
		ts := float64(time.Now().Add(-back).UnixNano()) / 1e9
		fmt.Fprintf(w, "data: {\"seq\":2,\"ts\":%.6f,\"events\":[{\"type\":\"BlockStored\",\"block_hashes\":[7,8]}]}\n\n", ts)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	up := httptest.NewServer(mux)
	t.Cleanup(up.Close)
	p, err := route.Parse("round-robin", policies.Env{BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Endpoints: []string{up.URL}, Policy: p, KVEvents: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	var m dto.Metric
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := r.kvEventLag.Write(&m); err != nil {
			t.Fatal(err)
		}
		if m.GetHistogram().GetSampleCount() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no KV-event lag observed within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	h := m.GetHistogram()
	if h.GetSampleCount() != 1 {
		t.Errorf("%d lags observed, want 1 (the snapshot is not a step's batch)", h.GetSampleCount())
	}
	if lag := h.GetSampleSum(); lag < back.Seconds() || lag > back.Seconds()+5 {
		t.Errorf("lag %.3f s, want at least the %v the batch waited, and not seconds more", lag, back)
	}
	if n := r.endpoints[0].view().Cache.CachedPrefixBlocks([]uint64{7, 8, 9}); n != 2 {
		t.Errorf("prefix index matches %d blocks of [7 8 9], want 2", n)
	}
}
