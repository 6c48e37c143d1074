package route

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/serving"
)

// choices routes the same request n times over fixed views and returns the decisions.
func choices(p Policy, views []serving.InstanceView, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = p.Route(request(nil), views)
	}
	return out
}

func distinct(xs []int) map[int]bool {
	m := map[int]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func TestSimpleDecisions(t *testing.T) {
	kv := func(usage ...float64) []serving.InstanceView {
		v := make([]serving.InstanceView, len(usage))
		for i, u := range usage {
			v[i] = serving.InstanceView{Index: i, KVUsage: u}
		}
		return v
	}
	withRunning := loadViews(1, 0, 2)
	withRunning[1].Running = 4 // load 4, though its queue is the shortest
	tests := []struct {
		name  string
		spec  string
		views []serving.InstanceView
		// allowed is the set every decision must fall in; all of it must be used.
		allowed []int
	}{
		{"least-request unique", "least-request", loadViews(3, 1, 2), []int{1}},
		{"least-request counts running", "least-request", withRunning, []int{0}},
		{"least-request ties shared", "least-request", loadViews(1, 0, 0, 5), []int{1, 2}},
		{"least-request one view", "least-request", loadViews(9), []int{0}},
		{"least-kv unique", "least-kv", kv(0.5, 0.2, 0.9), []int{1}},
		{"least-kv ties shared", "least-kv", kv(0.3, 0.1, 0.1, 0.1), []int{1, 2, 3}},
		{"power-of-two two views", "power-of-two", loadViews(4, 2), []int{1}},
		{"power-of-two never the most loaded", "power-of-two", loadViews(0, 1, 2, 3, 4, 5, 6, 9), []int{0, 1, 2, 3, 4, 5, 6}},
		{"power-of-two equal loads", "power-of-two", loadViews(3, 3, 3), []int{0, 1, 2}},
		{"power-of-two one view", "power-of-two", loadViews(3), []int{0}},
		{"random uses every view", "random", loadViews(5, 0, 0, 0), []int{0, 1, 2, 3}},
		{"round-robin", "round-robin", loadViews(5, 0, 0), []int{0, 1, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.spec, testEnv)
			got := distinct(choices(p, tc.views, 400))
			want := map[int]bool{}
			for _, i := range tc.allowed {
				want[i] = true
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("decisions used (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRoundRobinOrder(t *testing.T) {
	p := mustParse(t, "round-robin", testEnv)
	got := choices(p, loadViews(0, 0, 0), 7)
	got = append(got, choices(p, loadViews(0, 0), 3)...) // the cluster shrinks
	want := []int{0, 1, 2, 0, 1, 2, 0, 1, 0, 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round-robin order (-want +got):\n%s", diff)
	}
}

// TestTiesAreFair checks the seeded tie-break spreads evenly rather than favouring a
// position.
func TestTiesAreFair(t *testing.T) {
	for _, spec := range []string{"least-request", "least-kv", "random", "power-of-two"} {
		p := mustParse(t, spec, testEnv)
		counts := make([]int, 4)
		for _, i := range choices(p, loadViews(0, 0, 0, 0), 4000) {
			counts[i]++
		}
		for i, c := range counts {
			if c < 800 || c > 1200 {
				t.Errorf("%s: view %d chosen %d times of 4000, want about 1000 (%v)", spec, i, c, counts)
			}
		}
	}
}

func TestEmptyViews(t *testing.T) {
	for _, name := range Registry.Names() {
		p := mustParse(t, name, testEnv)
		if got := p.Route(request(prompt(1, 1, 4, 8)), nil); got != -1 {
			t.Errorf("%s: Route with no views = %d, want -1", name, got)
		}
	}
}

// TestDeterminism runs every registered policy twice from one seed over a changing
// cluster: the decisions must be identical. Randomised policies must decide differently
// under another seed.
func TestDeterminism(t *testing.T) {
	randomised := map[string]bool{"random": true, "power-of-two": true}
	for _, name := range Registry.Names() {
		t.Run(name, func(t *testing.T) {
			run := func(seed uint64) []int {
				env := policies.Env{Seed: seed, BlockSize: 16}
				return workload(t, mustParse(t, name, env), 8, 300, 1)
			}
			a, b := run(1), run(1)
			if diff := cmp.Diff(a, b); diff != "" {
				t.Fatalf("same seed, different decisions (-first +second):\n%s", diff)
			}
			if randomised[name] && cmp.Equal(a, run(2)) {
				t.Errorf("seeds 1 and 2 gave identical decisions")
			}
		})
	}
}

func TestSimplePoliciesDoNotAllocate(t *testing.T) {
	views := loadViews(3, 1, 4, 1, 5, 9, 2, 6)
	req := request(prompt(1, 1, 8, 64))
	for _, name := range []string{"round-robin", "random", "least-request", "least-kv", "power-of-two"} {
		p := mustParse(t, name, testEnv)
		if a := testing.AllocsPerRun(100, func() { p.Route(req, views) }); a != 0 {
			t.Errorf("%s: %v allocations per Route, want 0", name, a)
		}
	}
}
