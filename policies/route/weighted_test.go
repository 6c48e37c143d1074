package route

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/serving"
)

func TestWeightedDecisions(t *testing.T) {
	h := prompt(1, 1, 8, 8)
	tests := []struct {
		name  string
		spec  string
		views []serving.InstanceView
		want  int
	}{
		{"queue only picks the shortest queue", "weighted:prefix=0,kv=0,queue=1", loadViews(5, 2, 9), 1},
		{"kv only picks the emptiest cache", "weighted:prefix=0,queue=0,kv=1",
			[]serving.InstanceView{{KVUsage: 0.9}, {KVUsage: 0.8}, {KVUsage: 0.95}}, 1},
		{"weights trade off", "weighted:prefix=0,queue=1,kv=3",
			// queue scores 1, 0.5, 0; kv scores 0.1, 0.5, 0.9: totals 1.3, 2, 2.7
			[]serving.InstanceView{{Waiting: 0, KVUsage: 0.9}, {Waiting: 1, KVUsage: 0.5}, {Waiting: 2, KVUsage: 0.1}}, 2},
		{"load-aware", "weighted:prefix=0,queue=0,kv=0,load=1,load_threshold=4", loadViews(3, 1, 4), 1},
		{"active", "weighted:prefix=0,queue=0,kv=0,active=1", loadViews(3, 1, 4), 1},
		{"precise prefix", "weighted:prefix=0,queue=0,kv=0,precise-prefix=1",
			[]serving.InstanceView{{Cache: setCache{}}, {Cache: setCache{h[0]: true}}, {}}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.spec, testEnv)
			for range 20 {
				if got := p.Route(request(h), tc.views); got != tc.want {
					t.Fatalf("Route = %d, want %d", got, tc.want)
				}
			}
		})
	}
}

// TestWeightedTies: equal totals are drawn uniformly by the max-score picker, and
// only among the maxima.
func TestWeightedTies(t *testing.T) {
	p := mustParse(t, "weighted:prefix=0,kv=0,queue=1", testEnv)
	views := loadViews(0, 3, 0, 0, 1)
	counts := map[int]int{}
	for range 3000 {
		counts[p.Route(request(nil), views)]++
	}
	if len(counts) != 3 || counts[1] != 0 || counts[4] != 0 {
		t.Fatalf("decisions %v, want only the three empty queues 0, 2, 3", counts)
	}
	for _, i := range []int{0, 2, 3} {
		if c := counts[i]; c < 850 || c > 1150 {
			t.Errorf("view %d chosen %d of 3000 times, want about 1000", i, c)
		}
	}
}

func TestWeightedPrefixRecordsThePick(t *testing.T) {
	// With prefix and queue, a repeated prompt stays where its prefix is until the queue
	// difference outweighs it: prefix 3 x 1 beats queue 2 x 1.
	p := mustParse(t, "weighted:prefix=3,queue=2,kv=0", testEnv)
	views := loadViews(0, 0, 0, 0)
	h := prompt(4, 1, 16, 16)
	first := p.Route(request(h), views)
	views[first].Waiting = 10
	for range 10 {
		if got := p.Route(request(h), views); got != first {
			t.Fatalf("repeated prompt went to %d, want %d where its prefix is", got, first)
		}
	}
	// Unrelated prompts avoid the long queue.
	if got := p.Route(request(prompt(5, 2, 16, 16)), views); got == first {
		t.Errorf("unrelated prompt went to the loaded instance %d", got)
	}
}

func TestWeightedPickers(t *testing.T) {
	views := loadViews(0, 1, 2) // queue scores 1, 0.5, 0
	tests := []struct {
		spec string
		want map[int]bool
	}{
		{"weighted:prefix=0,kv=0,queue=1,picker=max-score-picker", map[int]bool{0: true}},
		// Totals 1, 0.5, 0: the zero total is never drawn.
		{"weighted:prefix=0,kv=0,queue=1,picker=weighted-random-picker", map[int]bool{0: true, 1: true}},
		{"weighted:prefix=0,kv=0,queue=1,picker=random-picker", map[int]bool{0: true, 1: true, 2: true}},
		// No positive total: the weighted draw is uniform.
		{"weighted:prefix=0,kv=0,queue=0,picker=weighted-random-picker", map[int]bool{0: true, 1: true, 2: true}},
	}
	for _, tc := range tests {
		p := mustParse(t, tc.spec, testEnv)
		got := distinct(choices(p, views, 600))
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s: decisions used (-want +got):\n%s", tc.spec, diff)
		}
	}
}

func TestWeightedRandomProportions(t *testing.T) {
	counts := make([]int, 3)
	p := mustParse(t, "weighted:prefix=0,kv=0,queue=1,picker=weighted-random-picker", testEnv)
	for _, i := range choices(p, loadViews(0, 1, 2), 6000) {
		counts[i]++
	}
	// Probabilities 1/1.5 and 0.5/1.5.
	if counts[0] < 3800 || counts[0] > 4200 || counts[2] != 0 {
		t.Errorf("counts %v, want about 4000, 2000, 0", counts)
	}
}

func TestWeightedDefaultsAndString(t *testing.T) {
	p := mustParse(t, "weighted", testEnv)
	want := "weighted[3*prefix-cache-scorer + 2*queue-scorer + 2*kv-cache-utilization-scorer; max-score-picker]"
	if got := p.(*Weighted).String(); got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	p = mustParse(t, "weighted:prefix=3,queue=1,kv=1", testEnv)
	want = "weighted[3*prefix-cache-scorer + 1*queue-scorer + 1*kv-cache-utilization-scorer; max-score-picker]"
	if got := p.(*Weighted).String(); got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestWeightedParamErrors(t *testing.T) {
	tests := []struct{ spec, field string }{
		{"weighted:prefix=-1", "prefix"},
		{"weighted:queue=abc", "queue"},
		{"weighted:kv=NaN", "kv"},
		{"weighted:kv=Inf", "kv"},
		{"weighted:picker=best", "picker"},
		{"weighted:load_threshold=0", "load_threshold"},
		{"weighted:lru_capacity=0", "lru_capacity"},
		{"weighted:max_prefix_blocks=-3", "max_prefix_blocks"},
		{"weighted:prefixx=1", "prefixx"},
	}
	for _, tc := range tests {
		_, err := Parse(tc.spec, testEnv)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Parse(%q) = %v, want an error naming %q", tc.spec, err, tc.field)
		}
	}
}

func TestWeightedDoesNotAllocate(t *testing.T) {
	p := mustParse(t, "weighted:prefix=3,queue=2,kv=2,load=1,active=1,precise-prefix=1,lru_capacity=512", testEnv)
	views := loadViews(1, 2, 3, 4, 5, 6, 7, 8)
	reqs := make([]*serving.Request, 32)
	for i := range reqs {
		reqs[i] = request(prompt(uint64(i%4), uint64(i), 40, 64))
	}
	for k := range 300 {
		p.Route(reqs[k%len(reqs)], views)
	}
	k := 0
	if a := testing.AllocsPerRun(200, func() { p.Route(reqs[k%len(reqs)], views); k++ }); a != 0 {
		t.Errorf("%v allocations per Route, want 0", a)
	}
}

// TestWeightedSharedFirstBlock pins llm-d's behaviour when every prompt shares its first
// block (the Mooncake traces): once an endpoint has been sent a request, its
// prefix-cache-scorer score is at least 1/T for every later prompt of T blocks, while the
// queue-scorer (all waiting queues equal: 1.0 each) and the kv-cache-utilization-scorer
// (equal usage) tie. The max-score-picker only draws among exact ties, so every request
// after the first goes to the first endpoint, and the others get nothing, until a waiting
// queue or a KV-usage gap outweighs 3/T. GIE's code does the same (see scorers.go).
func TestWeightedSharedFirstBlock(t *testing.T) {
	firsts := make([]int, 3)
	for seed := range uint64(60) {
		p := mustParse(t, "weighted:prefix=3,queue=2,kv=2", policies.Env{Seed: seed, BlockSize: 16})
		idle := loadViews(0, 0, 0)
		counts := make([]int, 3)
		for id := range uint64(300) {
			n := 2 + int(id%13) // 2..14 blocks, the first one shared by all
			counts[p.Route(request(prompt(0, id, 1, n)), idle)]++
		}
		first := slices.IndexFunc(counts, func(c int) bool { return c > 0 })
		want := make([]int, 3)
		want[first] = 300
		if diff := cmp.Diff(want, counts); diff != "" {
			t.Fatalf("seed %d: requests per endpoint with tied queues and KV (-want +got):\n%s", seed, diff)
		}
		firsts[first]++
	}
	// The first request meets three exact ties: the seeded draw spreads it.
	for i, c := range firsts {
		if c < 10 {
			t.Errorf("endpoint %d took the first request under %d of 60 seeds, want about 20 (firsts %v)", i, c, firsts)
		}
	}

	// What ends the streak: a waiting request at the holder costs it the queue-scorer's 2,
	// more than a match of 1 of T blocks earns (3/T < 2 for T > 1.5); a prompt the holder
	// has entirely (3 x 1) still goes to it.
	p := mustParse(t, "weighted:prefix=3,queue=2,kv=2", testEnv)
	idle := loadViews(0, 0, 0)
	holder := p.Route(request(prompt(0, 1, 1, 4)), idle)
	queued := loadViews(0, 0, 0)
	queued[holder].Waiting = 1
	if got := p.Route(request(prompt(0, 2, 1, 4)), queued); got == holder {
		t.Errorf("a 1-of-4-block match went to endpoint %d despite its waiting request", got)
	}
	if got := p.Route(request(prompt(0, 1, 1, 4)), queued); got != holder {
		t.Errorf("a fully cached prompt went to endpoint %d, want its holder %d", got, holder)
	}
}
