package local

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/route"
	"servelab/policies/scale"
	"servelab/real/router"
	"servelab/serving"
	"servelab/sim"
	"servelab/traces"
)

type rowsReader struct{ rows []traces.Row }

func (r *rowsReader) Next() (traces.Row, error) {
	if len(r.rows) == 0 {
		return traces.Row{}, io.EOF
	}
	row := r.rows[0]
	r.rows = r.rows[1:]
	return row, nil
}

type stepModel struct{}

func (stepModel) StepTime(s serving.StepShape) float64 { return 0.02 + 0.0005*float64(s.Tokens()) }
func (stepModel) Name() string                         { return "test" }

// decision is what both worlds must agree on at each tick.
type decision struct {
	Time                 float64
	Replicas, Ready      int
	Desired              int
	Reason               string
	Start, Cancel, Drain int
}

func record(o scale.Observation, d scale.Decision, a scale.Actions) decision {
	return decision{Time: o.Time, Replicas: o.Replicas, Ready: o.Ready, Desired: d.Replicas, Reason: d.Reason,
		Start: len(a.Start), Cancel: len(a.Cancel), Drain: len(a.Drain)}
}

// The scaling policy runs unchanged in both worlds: the observations the simulator makes
// of a burst, fed through servelab up's autoscaler (real engine processes started and
// drained behind the router), give the same decisions, and the real cluster follows them.
func TestAutoscaleRealFollowsTheSimulatorsDecisions(t *testing.T) {
	const spec = "hpa:metric=concurrency,target=4,max-replicas=3,interval=2,scale-down-window=6"
	newPolicy := func() scale.Policy {
		p, err := scale.Parse(spec, policies.Env{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The simulator: 1 request/s, a burst of 30/s from 10 s to 20 s, then 1/s to 40 s.
	var rows []traces.Row
	for _, seg := range []struct{ from, to, rate float64 }{{0, 10, 1}, {10, 20, 30}, {20, 40, 1}} {
		for at := seg.from; at < seg.to; at += 1 / seg.rate {
			rows = append(rows, traces.Row{Arrival: at, InputTokens: 64, OutputTokens: 32})
		}
	}
	env := policies.Env{Seed: 1, BlockSize: 16}
	rp, err := route.Parse("least-request", env)
	if err != nil {
		t.Fatal(err)
	}
	var simObs []scale.Observation
	var want []decision
	cfg := sim.Config{
		Instances: 6, Router: rp, BlockSize: 16, KVBlocks: 1000, Latency: stepModel{},
		NewBatch: func(int) (batch.Policy, error) { return batch.Registry.Build(policies.Spec{Name: "vllm"}, env) },
		NewEvict: func(int) (evict.Policy, error) { return evict.Registry.Build(policies.Spec{Name: "lru"}, env) },
		Autoscale: &sim.Autoscale{Policy: newPolicy(), OnDecision: func(o scale.Observation, d scale.Decision, a scale.Actions) error {
			simObs = append(simObs, o)
			want = append(want, record(o, d, a))
			return nil
		}},
	}
	if _, err := sim.Run(cfg, &rowsReader{rows: rows}); err != nil {
		t.Fatal(err)
	}
	peak := 0
	for _, d := range want {
		peak = max(peak, d.Desired)
	}
	if peak < 2 || want[len(want)-1].Desired != 1 {
		t.Fatalf("the simulated burst should scale up and back to 1: %+v", want)
	}

	// The real path: the same policy spec over fake engine processes, fed the simulator's
	// observations at its times, one tick at a time.
	c, err := Start(context.Background(), Options{
		Engines:      1,
		Command:      []string{os.Args[0]},
		Env:          []string{"FAKE_ENGINE=ok"},
		Router:       router.Config{Policy: roundRobin(t), ScrapeInterval: 10 * time.Millisecond},
		Log:          io.Discard,
		StartTimeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(5 * time.Second) })
	ticks := make(chan time.Time)
	decided := make(chan decision, 1)
	k := 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Autoscale(ctx, AutoscaleOptions{
			Policy: newPolicy(),
			Ticks:  ticks,
			Observe: func(float64) scale.Observation {
				o := simObs[k]
				return scale.Observation{Time: o.Time, Waiting: o.Waiting, Running: o.Running, KVUsage: o.KVUsage,
					Finished: o.Finished, MetSLO: o.MetSLO, Arrived: o.Arrived}
			},
			OnDecision: func(o scale.Observation, d scale.Decision, a scale.Actions) { decided <- record(o, d, a) },
		})
		done <- err
	}()
	var got []decision
	for k = 0; k < len(simObs); k++ {
		ticks <- time.Now()
		d := <-decided
		got = append(got, d)
		// The cluster follows: the router routes to exactly the decided engines once the
		// started ones are up and the drained ones gone (the simulator's delay is 0).
		deadline := time.Now().Add(20 * time.Second)
		for {
			c.mu.Lock()
			n := len(c.Endpoints)
			c.mu.Unlock()
			if n == d.Desired && len(c.Router.Endpoints()) == d.Desired {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("decision %d (%+v): the cluster has %d engines and the router %d endpoints after 20 s", k, d, n, len(c.Router.Endpoints()))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decisions, simulator (-) vs real (+):\n%s", diff)
	}
	select {
	case err := <-c.Done():
		t.Fatalf("a drained engine's exit was reported as a crash: %v", err)
	default:
	}
}

// The arrival count is the router counter's growth per endpoint: an endpoint removed from
// the router takes its series with it, which must not count as negative arrivals.
func TestAutoscaleArrivalsSurviveARemovedEndpoint(t *testing.T) {
	reg := prometheus.NewRegistry()
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "servelab_router_decisions_total", Help: "h"}, []string{"endpoint"})
	reg.MustRegister(decisions)
	a := &autoscaler{opts: AutoscaleOptions{Gatherer: reg}}
	arrivals := func() int {
		n, _, _ := a.routerCounts()
		return n
	}
	decisions.WithLabelValues("a").Add(5)
	decisions.WithLabelValues("b").Add(3)
	got := []int{arrivals()}
	decisions.DeleteLabelValues("a")
	decisions.WithLabelValues("b").Add(2)
	got = append(got, arrivals())
	decisions.WithLabelValues("c").Add(4)
	got = append(got, arrivals())
	if diff := cmp.Diff([]int{8, 2, 4}, got); diff != "" {
		t.Errorf("arrivals (-want +got):\n%s", diff)
	}
}

// Finished and MetSLO are the growth of the router's servelab_router_slo_requests_total
// since the previous observation: met and missed requests finished, the met ones met.
func TestAutoscaleSLOCountsAreTheRoutersGrowth(t *testing.T) {
	reg := prometheus.NewRegistry()
	outcomes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "servelab_router_slo_requests_total", Help: "h"}, []string{"outcome"})
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "servelab_router_decisions_total", Help: "h"}, []string{"endpoint"})
	reg.MustRegister(outcomes, decisions)
	a := &autoscaler{opts: AutoscaleOptions{Gatherer: reg}}
	type counts struct{ Arrived, Finished, Met int }
	var got []counts
	observe := func() {
		var c counts
		c.Arrived, c.Finished, c.Met = a.routerCounts()
		got = append(got, c)
	}
	outcomes.WithLabelValues(router.SLOMet).Add(3)
	outcomes.WithLabelValues(router.SLOMissed).Add(1)
	decisions.WithLabelValues("a").Add(6)
	observe()
	outcomes.WithLabelValues(router.SLOMissed).Add(2)
	observe()
	observe()
	outcomes.WithLabelValues(router.SLOMet).Add(5)
	decisions.WithLabelValues("a").Add(1)
	observe()
	want := []counts{{6, 4, 3}, {0, 2, 0}, {0, 0, 0}, {1, 5, 5}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("router counts per observation (-want +got):\n%s", diff)
	}
}
