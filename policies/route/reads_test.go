package route

import (
	"testing"

	"servelab/policies"
	"servelab/serving"
)

// cacheSpy records whether a policy asked an instance's exact prefix cache anything.
type cacheSpy struct{ asked *bool }

func (c cacheSpy) CachedPrefixBlocks(hashes []uint64) int {
	*c.asked = true
	return len(hashes) / 2
}

// otherPolicy is a policy of a type this package does not know.
type otherPolicy struct{}

func (otherPolicy) Route(*serving.Request, []serving.InstanceView) int { return 0 }

// TestReadsCaches: ReadsCaches is true exactly for the policies that ask
// InstanceView.Cache (checked by routing requests over views whose caches record being
// asked), and for policies it does not know.
func TestReadsCaches(t *testing.T) {
	for _, spec := range []string{
		"round-robin", "random", "least-request", "least-kv", "power-of-two", "prefix-affinity",
		"weighted", "weighted:precise-prefix=1", "weighted:precise-prefix=2,prefix=0,queue=0,kv=0",
		"testdata/llm-d-default.yaml", "testdata/all-scorers.yaml",
	} {
		t.Run(spec, func(t *testing.T) {
			p, err := Parse(spec, policies.Env{Seed: 1, BlockSize: 16})
			if err != nil {
				t.Fatal(err)
			}
			asked := false
			views := make([]serving.InstanceView, 3)
			for i := range views {
				views[i] = serving.InstanceView{Index: i, Waiting: i, Running: 1, KVUsage: 0.1 * float64(i), Cache: cacheSpy{&asked}}
			}
			for n := range 20 {
				req := &serving.Request{ID: uint64(n), PromptTokens: 64, BlockHashes: []uint64{1, 2, uint64(n) + 3, uint64(n) + 4}}
				p.Route(req, views)
			}
			if got := ReadsCaches(p); got != asked {
				t.Errorf("ReadsCaches %v, but the policy asked the caches: %v", got, asked)
			}
		})
	}
	if !ReadsCaches(otherPolicy{}) {
		t.Error("a policy of an unknown type is assumed not to read the caches")
	}
}
