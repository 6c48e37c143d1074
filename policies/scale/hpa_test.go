package scale

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
)

func mustParse(t *testing.T, spec string) Policy {
	t.Helper()
	p, err := Parse(spec, policies.Env{})
	if err != nil {
		t.Fatalf("%s: %v", spec, err)
	}
	return p
}

// decide feeds the observations in turn and returns the decisions.
func decide(t *testing.T, p Policy, obs []Observation) []int {
	t.Helper()
	var out []int
	for _, o := range obs {
		out = append(out, p.Decide(o).Replicas)
	}
	return out
}

func TestHPA(t *testing.T) {
	q := func(at float64, replicas, ready, waiting int) Observation {
		return Observation{Time: at, Replicas: replicas, Ready: ready, Waiting: waiting}
	}
	tests := []struct {
		name string
		spec string
		obs  []Observation
		want []int
	}{
		{
			// desired = ceil(ready * metric/target): 2 ready with 9 waiting each at target
			// 4 -> ceil(2*9/4) = 5; within tolerance holds; at min it stays.
			name: "ratio, tolerance and bounds",
			spec: "hpa:target=4,max-replicas=10,scale-down-window=0",
			obs:  []Observation{q(0, 2, 2, 18), q(15, 5, 5, 21), q(30, 5, 5, 23), q(45, 5, 5, 0), q(60, 1, 1, 0)},
			want: []int{5, 5, 6, 1, 1},
		},
		{
			name: "max replicas caps",
			spec: "hpa:target=1,max-replicas=3",
			obs:  []Observation{q(0, 1, 1, 100)},
			want: []int{3},
		},
		{
			// The default scale-down window (300 s) holds the highest recommendation of
			// the last 300 s: the pool shrinks only once the burst is 300 s old.
			name: "scale-down stabilization window",
			spec: "hpa:target=4,max-replicas=8",
			obs:  []Observation{q(0, 4, 4, 16), q(100, 4, 4, 0), q(299, 4, 4, 0), q(301, 4, 4, 0)},
			want: []int{4, 4, 4, 1},
		},
		{
			// Scale-up window 60 s: the lowest recommendation of the last 60 s wins, so a
			// single spike does not grow the pool.
			name: "scale-up stabilization window",
			spec: "hpa:target=4,max-replicas=8,scale-up-window=60,scale-down-window=0",
			obs:  []Observation{q(0, 2, 2, 8), q(15, 2, 2, 40), q(30, 2, 2, 8), q(75, 2, 2, 40), q(90, 2, 2, 40)},
			want: []int{2, 2, 2, 2, 6}, // 6: the scale-up rate limit, max(2+4, 2x2)
		},
		{
			// Starting replicas: a high ratio over the one ready replica recommends 3,
			// below the 4 asked for; the HPA holds rather than cancel a starting one.
			name: "unready replicas do not reverse direction",
			spec: "hpa:target=4,max-replicas=8,scale-down-window=0",
			obs:  []Observation{q(0, 4, 1, 12)},
			want: []int{4},
		},
		{
			// Rate limits per 15 s period: up by max(4 pods, 100%), so 1 -> 5 then
			// waiting for the period; down by at most 50%.
			name: "behavior rate limits",
			spec: "hpa:target=1,max-replicas=20,scale-down-window=0,scale-down-percent=50,interval=5",
			obs:  []Observation{q(0, 1, 1, 20), q(5, 5, 5, 100), q(16, 5, 5, 100), q(31, 10, 10, 0), q(47, 5, 5, 0)},
			want: []int{5, 5, 10, 5, 3},
		},
		{
			// slo: ratio (1-attainment)/(1-target): 20% missed against 10% allowed doubles.
			name: "slo attainment over its window",
			spec: "hpa:metric=slo,target=0.9,max-replicas=8,scale-down-window=0,window=30",
			obs: []Observation{
				{Time: 0, Replicas: 2, Ready: 2, Finished: 10, MetSLO: 8},
				{Time: 15, Replicas: 4, Ready: 4},                           // window still holds 8/10
				{Time: 45, Replicas: 8, Ready: 8},                           // nothing finished: hold
				{Time: 60, Replicas: 8, Ready: 8, Finished: 20, MetSLO: 20}, // all met: shrink to min
			},
			want: []int{4, 8, 8, 1},
		},
		{
			// rps: arrivals over the window's span; the first observation's counts have no
			// start, so they are left out. 15 s apart with 300, 600, 600 arrivals at target
			// 10 per replica: 20/s, 30/s, then 40/s over the window -> 2, 3, 4 replicas.
			name: "rps over its window",
			spec: "hpa:metric=rps,target=10,max-replicas=8,scale-down-window=0,window=30",
			obs: []Observation{
				{Time: 0, Replicas: 1, Ready: 1, Arrived: 999}, // no rate yet: hold
				{Time: 15, Replicas: 1, Ready: 1, Arrived: 300},
				{Time: 30, Replicas: 2, Ready: 2, Arrived: 600},
				{Time: 45, Replicas: 3, Ready: 3, Arrived: 600},
			},
			want: []int{1, 2, 3, 4},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decide(t, mustParse(t, tt.spec), tt.obs)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("decisions (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHPARejectsBadSpecs(t *testing.T) {
	for _, tt := range []struct{ spec, want string }{
		{"hpa:metric=cpu", `"metric"`},
		{"hpa:target=0", `"target"`},
		{"hpa:metric=kv,target=70", `"target"`},
		{"hpa:metric=slo,target=1", `"target"`},
		{"hpa:min-replicas=0", `"min-replicas"`},
		{"hpa:min-replicas=3,max-replicas=2", `"max-replicas"`},
		{"hpa:scale-down-window=-1", `"scale-down-window"`},
		{"hpa:interval=0", `"interval"`},
		{"hpa:scale-down-percent=120", `"scale-down-percent"`},
		{"hpa:targett=3", `targett`},
		{"nope", `unknown scale policy "nope"`},
	} {
		_, err := Parse(tt.spec, policies.Env{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one naming %s", tt.spec, err, tt.want)
		}
	}
}
