package route

import (
	"testing"

	"servelab/serving"
)

func TestPrefixAffinityFollowsPrefix(t *testing.T) {
	p := mustParse(t, "prefix-affinity", testEnv)
	views := loadViews(0, 0, 0, 0, 0, 0, 0, 0)
	first := p.Route(request(prompt(1, 0, 32, 40)), views)
	// Load the chosen instance: a cache hit must still beat load, which only breaks ties.
	views[first].Waiting = 5
	for id := uint64(1); id < 20; id++ {
		if got := p.Route(request(prompt(1, id, 32, 40)), views); got != first {
			t.Fatalf("request %d sharing 32 of 40 blocks went to %d, want %d", id, got, first)
		}
	}
}

func TestPrefixAffinitySpreadsUnrelatedPrompts(t *testing.T) {
	p := mustParse(t, "prefix-affinity", testEnv)
	views := loadViews(0, 0, 0, 0, 0, 0, 0, 0)
	used := map[int]int{}
	for id := range uint64(64) {
		used[p.Route(request(prompt(100+id, id, 16, 16)), views)]++
	}
	// Unrelated prompts score 0 everywhere and equal loads tie, so the seeded draw
	// spreads them; 64 draws over 8 instances miss one with probability < 0.02%.
	if len(used) != 8 {
		t.Errorf("64 unrelated prompts used %d of 8 instances: %v", len(used), used)
	}
}

func TestPrefixAffinityTieBreaks(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		waiting []int
		// warm is recorded on view warmAt first (by routing it with only that view).
		warmAt int
		want   int
	}{
		{"no match goes to least loaded", "prefix-affinity", []int{3, 1, 2}, -1, 1},
		{"match beats load", "prefix-affinity", []int{3, 1, 2}, 2, 2},
		{"load guard passes over the match", "prefix-affinity:load_guard=1", []int{3, 1, 5}, 2, 1},
		{"load guard keeps a close match", "prefix-affinity:load_guard=2", []int{3, 1, 3}, 2, 2},
		{"huge load guard does not overflow", "prefix-affinity:load_guard=9223372036854775807", []int{3, 1, 5}, 2, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.spec, testEnv)
			views := loadViews(tc.waiting...)
			h := prompt(9, 1, 8, 8)
			if tc.warmAt >= 0 {
				p.Route(request(h), views[tc.warmAt:tc.warmAt+1])
			}
			if got := p.Route(request(h), views); got != tc.want {
				t.Errorf("Route = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestPrefixAffinityUsesInstanceIndex checks the index follows InstanceView.Index, not
// the view's position, so a router that passes a subset of views keeps its history.
func TestPrefixAffinityUsesInstanceIndex(t *testing.T) {
	p := mustParse(t, "prefix-affinity", testEnv)
	all := []serving.InstanceView{{Index: 0}, {Index: 1}, {Index: 2}}
	h := prompt(5, 1, 10, 10)
	if got := p.Route(request(h), all[2:]); got != 0 {
		t.Fatalf("single view: Route = %d, want 0", got)
	}
	if got := p.Route(request(h), all); got != 2 {
		t.Errorf("after routing to Index 2, Route over all = %d, want position 2", got)
	}
}

func TestPrefixAffinityDoesNotAllocate(t *testing.T) {
	p := mustParse(t, "prefix-affinity:lru_capacity=512", testEnv)
	views := loadViews(1, 2, 3, 4, 5, 6, 7, 8)
	prompts := make([][]uint64, 32)
	for i := range prompts {
		prompts[i] = prompt(uint64(i%4), uint64(i), 40, 64)
	}
	for k := range 200 { // fill every instance's LRU
		p.Route(request(prompts[k%len(prompts)]), views)
	}
	reqs := make([]*serving.Request, len(prompts))
	for i, h := range prompts {
		reqs[i] = request(h)
	}
	k := 0
	if a := testing.AllocsPerRun(200, func() { p.Route(reqs[k%len(reqs)], views); k++ }); a != 0 {
		t.Errorf("%v allocations per Route, want 0", a)
	}
}

func TestPrefixAffinityParamErrors(t *testing.T) {
	for _, spec := range []string{
		"prefix-affinity:lru_capacity=0",
		"prefix-affinity:lru_capacity=x",
		"prefix-affinity:max_prefix_blocks=0",
		"prefix-affinity:load_guard=-1",
		"prefix-affinity:typo=1",
	} {
		if _, err := Parse(spec, testEnv); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", spec)
		}
	}
}
