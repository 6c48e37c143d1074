package server

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/engine"
	"servelab/engine/kv"
)

// TestKVEventMedium: with KV tiers, /v1/kv_events names each event's tier in vLLM's
// medium field; without them the field is absent, as before tiers.
func TestKVEventMedium(t *testing.T) {
	b := engine.KVEventBatch{Seq: 3, Time: time.Unix(2, 0), Events: []kv.Event{
		{Kind: kv.BlockRemoved, Hashes: []uint64{7}, Medium: kv.MediumGPU},
		{Kind: kv.BlockStored, Hashes: []uint64{7}, Medium: kv.MediumCPU},
		{Kind: kv.BlockStored, Hashes: []uint64{8}},
		{Kind: kv.AllBlocksCleared},
	}}
	got, err := json.Marshal(encodeKVBatch(b))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"seq":3,"ts":2,"events":[{"type":"BlockRemoved","block_hashes":[7],"medium":"GPU"},{"type":"BlockStored","block_hashes":[7],"medium":"CPU"},{"type":"BlockStored","block_hashes":[8]},{"type":"AllBlocksCleared"}]}`
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("wire (-want +got):\n%s", diff)
	}
}
