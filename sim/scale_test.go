package sim

import (
	"math"
	"strings"
	"testing"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/scale"
	"servelab/serving"
	"servelab/traces"
)

// burstTrace is 1 request/s for 20 s, 40/s for 20 s, then 1/s for 40 s.
func burstTrace() []traces.Row {
	var rows []traces.Row
	add := func(from, to, rate float64) {
		for t := from; t < to; t += 1 / rate {
			rows = append(rows, traces.Row{Arrival: t, InputTokens: 64, OutputTokens: 32})
		}
	}
	add(0, 20, 1)
	add(20, 40, 40)
	add(40, 80, 1)
	return rows
}

// An autoscaled cluster grows under the burst and shrinks after it; a request only ever
// reaches an instance that is ready (its scale-up delay passed) and not draining; and it
// bills fewer instance-hours than its max would.
func TestAutoscaleAddsAndDrainsInstances(t *testing.T) {
	const delay = 2.0
	cfg := testConfig(t, 8, "least-request", "vllm", 1000)
	cfg.Latency = affineModel{perStep: 0.02, perToken: 0.0005}
	pol, err := scale.Parse("hpa:metric=concurrency,target=4,max-replicas=4,interval=1,scale-down-window=5", policies.Env{})
	if err != nil {
		t.Fatal(err)
	}
	// Per slot, the intervals it was routable: [ready, drained).
	type life struct{ from, to float64 }
	lives := map[int][]life{0: {{0, math.Inf(1)}}}
	var replicas []int
	cfg.Autoscale = &Autoscale{Policy: pol, ScaleUpDelay: delay, OnDecision: func(o scale.Observation, d scale.Decision, a scale.Actions) error {
		replicas = append(replicas, d.Replicas)
		for _, i := range a.Start {
			lives[i] = append(lives[i], life{o.Time + delay, math.Inf(1)})
		}
		for _, i := range a.Cancel {
			lives[i] = lives[i][:len(lives[i])-1]
		}
		for _, i := range a.Drain {
			lives[i][len(lives[i])-1].to = o.Time
		}
		return nil
	}}
	var recs []serving.Record
	cfg.OnRecord = func(r *serving.Record) error { recs = append(recs, *r); return nil }
	res, err := Run(cfg, &sliceReader{rows: burstTrace()})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(burstTrace()) {
		t.Fatalf("%d records, want %d", len(recs), len(burstTrace()))
	}
	peak := 0
	for _, r := range replicas {
		peak = max(peak, r)
	}
	if peak != 4 || replicas[len(replicas)-1] != 1 {
		t.Errorf("replicas over time %v: want a peak of 4 and 1 at the end", replicas)
	}
	for _, r := range recs {
		ok := false
		for _, l := range lives[r.Instance] {
			ok = ok || r.Arrival >= l.from && r.Arrival < l.to
		}
		if !ok {
			t.Fatalf("request %d arrived at %.3f s on instance %d, routable only in %v", r.ID, r.Arrival, r.Instance, lives[r.Instance])
		}
	}
	a := res.Summary.Autoscale
	if a == nil {
		t.Fatal("no autoscale summary")
	}
	end := recs[len(recs)-1].Finish
	for _, r := range recs {
		end = max(end, r.Finish)
	}
	if lo, hi := end/3600, 4*end/3600; !(a.InstanceHours > lo && a.InstanceHours < hi) {
		t.Errorf("instance-hours %.5f, want between one instance's %.5f and four's %.5f", a.InstanceHours, lo, hi)
	}
	if a.MaxInstances != 4 || a.ScaleUps < 3 || a.ScaleDowns < 3 {
		t.Errorf("summary %+v: want max 4 instances, at least 3 scale-ups and 3 scale-downs", a)
	}
}

func TestAutoscaleRejectsBadClusters(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*ClusterSpec)
		want string
	}{
		{"bad policy", func(c *ClusterSpec) { c.Autoscale = "hpa:max-replicas=0" }, "autoscale: "},
		{"delay without policy", func(c *ClusterSpec) { c.ScaleUpDelay = 3 }, "scale_up_delay_s: set without autoscale"},
		{"negative delay", func(c *ClusterSpec) { c.Autoscale, c.ScaleUpDelay = "hpa", -1 }, "scale_up_delay_s: must be"},
		{"pools", func(c *ClusterSpec) {
			c.Autoscale = "hpa"
			c.UsePools([]PoolSpec{{Name: "a", Instances: 1, GPU: "h100"}, {Name: "b", Instances: 1, GPU: "h100"}})
		}, "autoscale: scales one pool"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultClusterSpec()
			tt.edit(&c)
			_, err := c.Build(metrics.SLO{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}
