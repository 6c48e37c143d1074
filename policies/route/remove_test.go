package route

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/serving"
)

func TestPrefixIndexRemoveInstance(t *testing.T) {
	a, b := prompt(1, 1, 0, 8), prompt(2, 2, 0, 8)
	tests := []struct {
		name    string
		remove  []int
		want    []int // Match of a on instances 0..3 after the removals
		wantLen int   // len(x.lrus): trailing empty instances are trimmed
	}{
		{"none", nil, []int{8, 8, 8, 0}, 3},
		{"middle", []int{1}, []int{8, 0, 8, 0}, 3},
		{"last trims", []int{2}, []int{8, 8, 0, 0}, 2},
		{"all", []int{1, 0, 2}, []int{0, 0, 0, 0}, 0},
		{"unknown and negative are no-ops", []int{7, -1}, []int{8, 8, 8, 0}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := newIndex(t, 100, 256, 1)
			for i := range 3 {
				x.Record(i, a)
			}
			for _, i := range tc.remove {
				x.RemoveInstance(i)
			}
			got := make([]int, 4)
			for i := range got {
				got[i] = x.Match(i, a)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("matches after removing %v (-want +got):\n%s", tc.remove, diff)
			}
			if len(x.lrus) != tc.wantLen {
				t.Errorf("%d instance LRUs kept, want %d", len(x.lrus), tc.wantLen)
			}
			// A removed instance records afresh.
			for _, i := range tc.remove {
				if i < 0 {
					continue
				}
				x.Record(i, b)
				if got := x.Match(i, b); got != 8 {
					t.Errorf("instance %d: Match after a new Record = %d, want 8", i, got)
				}
				if got := x.Match(i, a); got != 0 {
					t.Errorf("instance %d: a's blocks survived the removal (Match %d)", i, got)
				}
			}
		})
	}
}

// TestPoliciesRemoveInstance: the policies with a prefix index forget a removed instance,
// so the next instance given its index starts with nothing recorded.
func TestPoliciesRemoveInstance(t *testing.T) {
	for _, spec := range []string{"prefix-affinity", "weighted", "weighted:prefix=1,queue=0,kv=0"} {
		t.Run(spec, func(t *testing.T) {
			p, err := Parse(spec, policies.Env{Seed: 1, BlockSize: 16})
			if err != nil {
				t.Fatal(err)
			}
			rm, ok := p.(InstanceRemover)
			if !ok {
				t.Fatalf("%T does not implement InstanceRemover", p)
			}
			views := []serving.InstanceView{{Index: 0}, {Index: 1}}
			req := &serving.Request{BlockHashes: prompt(1, 1, 0, 64)}
			i := p.Route(req, views)
			x := prefixIndexOf(t, p)
			if x.Len(views[i].Index) == 0 {
				t.Fatalf("nothing recorded against instance %d", views[i].Index)
			}
			rm.RemoveInstance(views[i].Index)
			if n := x.Len(views[i].Index); n != 0 {
				t.Errorf("instance %d keeps %d entries after RemoveInstance", views[i].Index, n)
			}
		})
	}
}

func prefixIndexOf(t *testing.T, p Policy) *PrefixIndex {
	t.Helper()
	switch p := p.(type) {
	case *PrefixAffinity:
		return p.index
	case *Weighted:
		for _, s := range p.scorers {
			if s, ok := s.scorer.(*prefixCacheScorer); ok {
				return s.index
			}
		}
	}
	t.Fatalf("%T keeps no prefix index", p)
	return nil
}
