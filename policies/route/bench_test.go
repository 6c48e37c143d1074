package route

import (
	"fmt"
	"testing"

	"servelab/serving"
)

// BenchmarkRoute routes 64-block prompts (16 prefix groups sharing their first 32 blocks)
// over 8 and 64 instances whose loads and KV usage vary, for every policy. The precise
// scorer's cost includes the test's map-based cache, not only the policy's.
func BenchmarkRoute(b *testing.B) {
	specs := []struct{ name, spec string }{
		{"round-robin", "round-robin"},
		{"random", "random"},
		{"least-request", "least-request"},
		{"least-kv", "least-kv"},
		{"power-of-two", "power-of-two"},
		{"prefix-affinity", "prefix-affinity"},
		{"weighted", "weighted"},
		{"weighted-all-scorers", "weighted:prefix=3,queue=2,kv=2,load=1,active=1,precise-prefix=1"},
		{"epp-llm-d-default", "testdata/llm-d-default.yaml"},
	}
	reqs := make([]*serving.Request, 1024)
	for i := range reqs {
		reqs[i] = request(prompt(uint64(i%16), uint64(i), 32, 64))
	}
	for _, n := range []int{8, 64} {
		views := make([]serving.InstanceView, n)
		for i := range views {
			views[i] = serving.InstanceView{Index: i, Waiting: i % 5, Running: i % 7, KVUsage: float64(i%10) / 10, Cache: setCache{}}
		}
		for _, sp := range specs {
			b.Run(fmt.Sprintf("%s/instances=%d", sp.name, n), func(b *testing.B) {
				p := mustParse(b, sp.spec, testEnv)
				for k := range 2 * len(reqs) { // warm the prefix indexes
					p.Route(reqs[k%len(reqs)], views)
				}
				b.ReportAllocs()
				k := 0
				for b.Loop() {
					p.Route(reqs[k%len(reqs)], views)
					k++
				}
			})
		}
	}
}
