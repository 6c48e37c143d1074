package scale

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
)

func TestKPA(t *testing.T) {
	c := func(at float64, replicas, concurrency int) Observation {
		return Observation{Time: at, Replicas: replicas, Ready: replicas, Running: concurrency}
	}
	tests := []struct {
		name string
		spec string
		obs  []Observation
		want []int
	}{
		{
			// Target 10 at 100%: stable window 20 s, panic window 4 s. A burst to 50 panics
			// (3 wanted on 1 ready >= 200%); in panic the pool only grows; a stable window
			// after the last panic it shrinks, by at most half per decision
			// (max-scale-down-rate 2).
			name: "panic and stable windows",
			spec: "kpa:target=10,target-utilization-percentage=100,window=20,panic-window-percentage=20,max-scale=10",
			obs:  []Observation{c(0, 1, 10), c(2, 1, 10), c(4, 1, 50), c(6, 3, 30), c(8, 4, 0), c(26, 4, 0), c(28, 2, 0)},
			want: []int{1, 1, 3, 4, 4, 2, 1},
		},
		{
			// Utilization 70%: 140 concurrent on target 100 wants ceil(140/70) = 2; the
			// stable average of 100 and 180 (140) still 2, the panic window's 180 wants 3,
			// below 200% of 2 ready: no panic.
			name: "utilization",
			spec: "kpa:window=60,max-scale=10",
			obs:  []Observation{c(0, 2, 140), c(2, 2, 100), c(4, 2, 180)},
			want: []int{2, 2, 2},
		},
		{
			// rps: arrivals over the window's span; the first observation has no span.
			name: "rps",
			spec: "kpa:metric=rps,target=5,target-utilization-percentage=100,window=10,panic-window-percentage=50,max-scale=8",
			obs: []Observation{
				{Time: 0, Replicas: 1, Ready: 1, Arrived: 100},
				{Time: 2, Replicas: 1, Ready: 1, Arrived: 20}, // 10/s: 2 replicas, panic (2/1)
				{Time: 4, Replicas: 2, Ready: 2, Arrived: 20},
			},
			want: []int{1, 2, 2},
		},
		{
			name: "scale-down delay holds the highest recent decision",
			spec: "kpa:target=10,target-utilization-percentage=100,window=4,panic-window-percentage=50,scale-down-delay=10,max-scale=10,max-scale-down-rate=10",
			obs:  []Observation{c(0, 3, 30), c(2, 3, 30), c(6, 3, 10), c(8, 3, 10), c(13, 3, 10)},
			want: []int{3, 3, 3, 3, 1},
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

func TestKPARejectsBadSpecs(t *testing.T) {
	for _, tt := range []struct{ spec, want string }{
		{"kpa:metric=kv", `"metric"`},
		{"kpa:target-utilization-percentage=0", `"target-utilization-percentage"`},
		{"kpa:panic-threshold-percentage=100", `"panic-threshold-percentage"`},
		{"kpa:max-scale-down-rate=1", `"max-scale-down-rate"`},
		{"kpa:min-scale=0", `"min-scale"`},
		{"kpa:min-scale=3,max-scale=2", `"max-scale"`},
	} {
		_, err := Parse(tt.spec, policies.Env{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one naming %s", tt.spec, err, tt.want)
		}
	}
}
