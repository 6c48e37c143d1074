package route

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/serving"
)

func TestSplitFraction(t *testing.T) {
	const n = 200_000
	for _, tc := range []struct {
		fraction float64
		seed     uint64
	}{{0, 1}, {0.05, 1}, {0.2, 1}, {0.2, 2}, {0.5, 3}, {0.9, 4}, {1, 5}} {
		s := Split{Fraction: tc.fraction, Seed: tc.seed}
		b := 0
		for id := range uint64(n) {
			if s.Arm(id) == serving.ArmB {
				b++
			}
		}
		got := float64(b) / n
		// Five standard deviations of a binomial share: fails by chance about once in
		// three million runs, and a biased hash fails it every time.
		tol := 5 * math.Sqrt(tc.fraction*(1-tc.fraction)/n)
		if math.Abs(got-tc.fraction) > tol {
			t.Errorf("fraction %v seed %d: %d of %d ids in arm b (%.4f), want %.4f ± %.4f", tc.fraction, tc.seed, b, n, got, tc.fraction, tol)
		}
		if (tc.fraction == 0 && b != 0) || (tc.fraction == 1 && b != n) {
			t.Errorf("fraction %v: %d of %d in arm b", tc.fraction, b, n)
		}
	}
}

// A run of consecutive ids (a burst) must not land on one side: the halves of every
// block of 64 ids split near the fraction.
func TestSplitConsecutiveIDs(t *testing.T) {
	s := Split{Fraction: 0.5, Seed: 9}
	worst := 0
	for start := uint64(0); start < 64*1000; start += 64 {
		b := 0
		for id := start; id < start+64; id++ {
			if s.Arm(id) == serving.ArmB {
				b++
			}
		}
		worst = max(worst, abs(b-32))
	}
	if worst > 24 {
		t.Errorf("a block of 64 consecutive ids had %d more in one arm than half", worst)
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func TestSplitDeterministic(t *testing.T) {
	arms := func(s Split) string {
		var b strings.Builder
		for id := range uint64(4096) {
			b.WriteString(s.Arm(id))
		}
		return b.String()
	}
	s := Split{Fraction: 0.3, Seed: 42}
	if diff := cmp.Diff(arms(s), arms(Split{Fraction: 0.3, Seed: 42})); diff != "" {
		t.Errorf("same seed, different arms (-first +second):\n%s", diff)
	}
	if arms(s) == arms(Split{Fraction: 0.3, Seed: 43}) {
		t.Error("seeds 42 and 43 split 4096 ids identically")
	}
	// Raising the fraction only moves requests from a to b, as shifting a canary's
	// weight does: a request in b stays in b.
	lo, hi := Split{Fraction: 0.2, Seed: 42}, Split{Fraction: 0.6, Seed: 42}
	for id := range uint64(4096) {
		if lo.Arm(id) == serving.ArmB && hi.Arm(id) != serving.ArmB {
			t.Fatalf("id %d: in b at fraction 0.2, in a at 0.6", id)
		}
	}
}

func TestSplitKey(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want uint64
	}{{"0", 0}, {"17", 17}, {"18446744073709551615", math.MaxUint64}} {
		if got := SplitKey(tc.id); got != tc.want {
			t.Errorf("SplitKey(%q) = %d, want %d", tc.id, got, tc.want)
		}
	}
	u1, u2 := SplitKey("9b2e7c1e-3f0a-4d7e-8a55-0c3e6f1d2b4a"), SplitKey("9b2e7c1e-3f0a-4d7e-8a55-0c3e6f1d2b4b")
	if u1 == u2 || u1 != SplitKey("9b2e7c1e-3f0a-4d7e-8a55-0c3e6f1d2b4a") {
		t.Errorf("UUID keys: %d, %d", u1, u2)
	}
}

func TestParseArm(t *testing.T) {
	for in, want := range map[string]string{"a": "a", "A": "a", "b": "b", "B": "b"} {
		if got, err := ParseArm(in); err != nil || got != want {
			t.Errorf("ParseArm(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "c", "control", " a"} {
		if _, err := ParseArm(in); err == nil || !strings.Contains(err.Error(), serving.ArmHeader) {
			t.Errorf("ParseArm(%q): error %v, want one naming %s", in, err, serving.ArmHeader)
		}
	}
}

// recordingPolicy remembers the views it was given and picks a fixed instance.
type recordingPolicy struct {
	pick  int
	views [][]serving.InstanceView
}

func (p *recordingPolicy) Route(_ *serving.Request, views []serving.InstanceView) int {
	p.views = append(p.views, views)
	return p.pick
}

func TestABRoutesByArm(t *testing.T) {
	a, b := &recordingPolicy{pick: 0}, &recordingPolicy{pick: 1}
	ab, err := NewAB(a, b, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	ab.Split.Seed = 3
	views := loadViews(1, 2)
	for id := range uint64(64) {
		req := &serving.Request{ID: id}
		got := ab.Route(req, views)
		want, wantArm := 0, ab.Split.Arm(id)
		if wantArm == serving.ArmB {
			want = 1
		}
		if got != want || req.Arm != wantArm {
			t.Fatalf("request %d: routed to %d in arm %q, want %d in arm %q", id, got, req.Arm, want, wantArm)
		}
	}
	// An arm set beforehand (the router's header override) wins over the split.
	for _, arm := range []string{serving.ArmA, serving.ArmB} {
		for id := range uint64(16) {
			req := &serving.Request{ID: id, Arm: arm}
			if got := ab.Route(req, views); (got == 1) != (arm == serving.ArmB) || req.Arm != arm {
				t.Fatalf("request %d preset to arm %s: routed to %d, arm now %q", id, arm, got, req.Arm)
			}
		}
	}
	if len(a.views) == 0 || len(b.views) == 0 {
		t.Fatalf("arm a routed %d, arm b %d requests", len(a.views), len(b.views))
	}
	for _, v := range append(a.views, b.views...) {
		if diff := cmp.Diff(views, v); diff != "" {
			t.Fatalf("an arm saw other views (-given +seen):\n%s", diff)
		}
	}
}

func TestParseAB(t *testing.T) {
	env := policies.Env{Seed: 11, BlockSize: 16}
	p, err := ParseAB("least-request", "prefix-affinity", 0.25, env)
	if err != nil {
		t.Fatal(err)
	}
	ab, ok := p.(*AB)
	if !ok {
		t.Fatalf("ParseAB gave a %T", p)
	}
	if _, ok := ab.A.(*LeastRequest); !ok {
		t.Errorf("arm a is a %T", ab.A)
	}
	if _, ok := ab.B.(*PrefixAffinity); !ok {
		t.Errorf("arm b is a %T", ab.B)
	}
	if want := (Split{Fraction: 0.25, Seed: 11}); ab.Split != want {
		t.Errorf("split %+v, want %+v", ab.Split, want)
	}
	if p, err := ParseAB("least-request", "", 0, env); err != nil {
		t.Error(err)
	} else if _, ok := p.(*LeastRequest); !ok {
		t.Errorf("no arm b: got a %T, want the policy alone", p)
	}
	for _, tc := range []struct {
		a, b     string
		fraction float64
		want     string
	}{
		{"least-request", "", 0.2, "without a policy for arm b"},
		{"least-request", "no-such", 0.2, "arm b: unknown route policy"},
		{"no-such", "least-request", 0.2, "unknown route policy"},
		{"least-request", "random", -0.1, "want the share of requests in arm b, from 0 to 1"},
		{"least-request", "random", 1.5, "from 0 to 1"},
		{"least-request", "random", math.NaN(), "from 0 to 1"},
		{"least-request", "testdata/llm-d-pd.yaml", 0.5, "arm b: a P/D EndpointPickerConfig cannot be an A/B arm"},
	} {
		if _, err := ParseAB(tc.a, tc.b, tc.fraction, env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseAB(%q, %q, %v): error %v, want one containing %q", tc.a, tc.b, tc.fraction, err, tc.want)
		}
	}
}

func TestABReadsCaches(t *testing.T) {
	env := policies.Env{Seed: 1, BlockSize: 16}
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"least-request", "random", false},
		{"least-request", "weighted:precise-prefix=1", true},
	} {
		p, err := ParseAB(tc.a, tc.b, 0.5, env)
		if err != nil {
			t.Fatal(err)
		}
		if got := ReadsCaches(p); got != tc.want {
			t.Errorf("ReadsCaches(ab %s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// removingPolicy records the instances it was told to forget.
type removingPolicy struct {
	recordingPolicy
	removed []int
}

func (p *removingPolicy) RemoveInstance(i int) { p.removed = append(p.removed, i) }

func TestABRemovesInstancesFromBothArms(t *testing.T) {
	a, b := &removingPolicy{}, &removingPolicy{}
	ab, err := NewAB(a, b, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	var rm InstanceRemover = ab
	rm.RemoveInstance(2)
	rm.RemoveInstance(0)
	if diff := cmp.Diff([][]int{{2, 0}, {2, 0}}, [][]int{a.removed, b.removed}); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	// An arm without per-instance state is skipped.
	ab2, _ := NewAB(&recordingPolicy{}, b, 0.5)
	ab2.RemoveInstance(1)
	if len(b.removed) != 3 {
		t.Errorf("arm b removed %v", b.removed)
	}
}
