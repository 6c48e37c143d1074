package engine

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/engine/kv"
	"servelab/policies"
	"servelab/policies/batch"
)

type nopMover struct{}

func (nopMover) Offload(int32, int32)          {}
func (nopMover) Demote(int, int32, int32)      {}
func (nopMover) Fetch(int, int32, int)         {}
func (nopMover) Load(tier int, i int, b int32) {}

// TestTierConfigErrors: tiers without a mover would report hits they cannot load; tiers
// without prefix caching would never receive a block.
func TestTierConfigErrors(t *testing.T) {
	cpu := []kv.TierConfig{{Medium: kv.MediumCPU, Blocks: 4}}
	for _, tc := range []struct {
		name    string
		tiers   []kv.TierConfig
		mover   kv.Mover
		caching bool
		want    string
	}{
		{"no mover", cpu, nil, true, "KV tiers need a KV mover"},
		{"mover without tiers", nil, nopMover{}, true, "a KV mover without KV tiers"},
		{"no prefix caching", cpu, nopMover{}, false, "KV tiers need prefix caching"},
		{"bad tier", []kv.TierConfig{{Medium: kv.MediumCPU}}, nopMover{}, true, "blocks must be in"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bp, _, err := batch.Registry.Parse("vllm", policies.Env{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = New(Config{Executor: newPagedFake(4), NewDecoder: func(bool) TextDecoder { return byteDecoder{} },
				MaxModelLen: 64, NumBlocks: 16, BlockSize: 4, EnablePrefixCaching: tc.caching, Batch: bp,
				KVTiers: tc.tiers, KVMover: tc.mover, Metrics: NewMetrics(prometheus.NewRegistry(), "fake", 64)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
