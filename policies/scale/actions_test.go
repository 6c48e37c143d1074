package scale

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestPlan(t *testing.T) {
	r := func(st State, since float64) Replica { return Replica{State: st, Since: since} }
	pool := []Replica{r(Ready, 0), r(Ready, 30), r(Starting, 40), r(Off, 0), r(Draining, 35), r(Starting, 45), r(Ready, 10), r(Off, 0)}
	tests := []struct {
		name    string
		desired int
		want    Actions
	}{
		{"hold: 3 ready + 2 starting", 5, Actions{}},
		{"grow into the lowest off slots", 7, Actions{Start: []int{3, 7}}},
		{"grow past the slots: what fits", 9, Actions{Start: []int{3, 7}}},
		// Starting ones first, newest first; then ready ones, most recently ready first.
		{"shrink by 1", 4, Actions{Cancel: []int{5}}},
		{"shrink by 3", 2, Actions{Cancel: []int{5, 2}, Drain: []int{1}}},
		{"shrink to 1", 1, Actions{Cancel: []int{5, 2}, Drain: []int{1, 6}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Plan(pool, tt.desired, len(pool))
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Plan(%d) (-want +got):\n%s", tt.desired, diff)
			}
		})
	}
}

// The scaler starts at min-replicas ready, applies a decision's actions to its replicas and
// counts only starting and ready ones as the pool's replicas.
func TestScalerAppliesDecisions(t *testing.T) {
	s := NewScaler(mustParse(t, "hpa:metric=queue,target=1,min-replicas=2,max-replicas=6,scale-down-window=0"), 8, 0)
	o, d, a := s.Observe(Observation{Time: 1, Waiting: 8})
	if o.Replicas != 2 || o.Ready != 2 || d.Replicas != 6 || len(a.Start) != 4 {
		t.Fatalf("observation %+v, decision %+v, actions %+v: want 2 ready growing to 6 by 4 starts", o, d, a)
	}
	s.MarkReady(a.Start[0], 2)
	o, d, _ = s.Observe(Observation{Time: 3, Waiting: 3})
	if o.Replicas != 6 || o.Ready != 3 || d.Replicas != 6 {
		t.Fatalf("observation %+v, decision %+v: want 6 replicas, 3 ready, held (ratio 1)", o, d)
	}
	s.MarkReady(a.Start[1], 4)
	o, d, a = s.Observe(Observation{Time: 5})
	// Shrinking to min-replicas 2: the 2 starting ones cancelled, then 2 of the 4 ready
	// drained, the most recently ready first (slot 3 at 4 s, slot 2 at 2 s).
	if diff := cmp.Diff(Actions{Cancel: []int{5, 4}, Drain: []int{3, 2}}, a, cmpopts.EquateEmpty()); diff != "" || o.Ready != 4 || d.Replicas != 2 {
		t.Fatalf("observation %+v, decision %+v, actions (-want +got):\n%s", o, d, diff)
	}
	if s.Count(Draining) != 2 || s.Count(Ready) != 2 || s.Count(Starting) != 0 {
		t.Fatalf("replicas %+v: want 2 ready and 2 draining", s.Replicas())
	}
	s.Stopped(2, 6)
	if s.Count(Draining) != 1 || s.Replicas()[2].State != Off {
		t.Fatalf("replicas %+v after slot 2 stopped", s.Replicas())
	}
}
