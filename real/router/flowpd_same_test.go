package router

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/metrics"
	"servelab/policies/batch"
	"servelab/policies/flow"
	"servelab/policies/route"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
)

// pdPicks is where one request went: its decode and prefill instances, numbered as the
// simulator numbers its cluster (the prefill pool's instances first); -1 for none.
type pdPicks struct{ Decode, Prefill int }

// TestFlowPDSameDecisionsAsSimulator is TestFlowSameDecisionsAsSimulator with P/D
// disaggregation: one two-class trace through the simulator's disaggregated cluster (two
// prefill, two decode instances) with flow control, then replayed through servelab router
// with the same pd-profile-handler over two prefill and two decode endpoints whose
// /metrics serve, at each of the simulator's scrapes, the gauges the simulator read then.
// Both take the same flow decisions (dispatched at once, held, refused, and at each scrape
// which held requests go, in which order, to which decode endpoint), and each request's
// legs go to the same decode and prefill instances; the decider's threshold sits inside
// the trace's prompt lengths, so some requests run on their decode instance alone.
//
// The requests' prompts are token ids, as many as the trace's input tokens, so that the
// router's prompt length (the decider's input) is the simulator's. Neither side has a
// prefix cache to consult (the simulator runs without prefix caching, the test's engines
// publish no KV events), so the decider reads the prompt length alone.
func TestFlowPDSameDecisionsAsSimulator(t *testing.T) {
	rows, objectives, fc, env, newRoute := flowSameDecisionsSetup(t)
	decider := route.PrefixBasedPDDecider{NonCachedTokens: 200}
	const prefills = 2 // the simulator's prefill pool comes first

	// The simulator: its decisions, its requests' instances, and the events to replay in
	// its order.
	type event struct {
		scrape bool
		gauges []serving.InstanceView
		row    int
	}
	var events []event
	var simDecisions []flow.Decision
	simPicks := map[int]pdPicks{}
	next := 0
	lat := latency.NewLinear(latency.LinearCoefficients{Intercept: 0.01, PrefillToken: 1e-4, DecodeSeq: 1e-3})
	cfg := sim.Config{
		Instances: 4, Router: newRoute(),
		NewBatch: func(int) (batch.Policy, error) {
			p, _, err := batch.Registry.Parse("vllm:max_num_seqs=8", env)
			return p, err
		},
		Pools: []sim.Pool{
			{Name: "p", Role: sim.RolePrefill, Instances: prefills, Latency: lat, KVBlocks: 512},
			{Name: "d", Role: sim.RoleDecode, Instances: 2, Latency: lat, KVBlocks: 512},
		},
		Disagg: &sim.Disagg{
			PrefillRouter: newRoute(), Decider: decider,
			Link: sim.Link{Name: "test", BandwidthGBps: 1, LatencyUs: 100}, KVBytesPerToken: 1000,
		},
		KVBlocks: 512, BlockSize: 16,
		Latency:        lat,
		ScrapeInterval: 0.05,
		FlowControl:    &fc, Objectives: objectives,
		OnFlowDecision: func(d flow.Decision) error {
			// An arrival's decision comes as the simulator reads its row.
			if d.At == rows[d.ID].Arrival && int(d.ID) == next {
				events = append(events, event{row: next})
				next++
			}
			simDecisions = append(simDecisions, d)
			return nil
		},
		OnScrape: func(_ float64, g []serving.InstanceView) error {
			events = append(events, event{scrape: true, gauges: append([]serving.InstanceView(nil), g...)})
			return nil
		},
		OnRecord: func(r *serving.Record) error {
			p := pdPicks{Decode: r.Instance, Prefill: -1}
			if r.PrefillInstance != nil {
				p.Prefill = *r.PrefillInstance
			}
			simPicks[int(r.ID)] = p
			return nil
		},
		SLO: metrics.SLO{},
	}
	if _, err := sim.Run(cfg, &rowReader{rows: rows}); err != nil {
		t.Fatal(err)
	}
	if next != len(rows) {
		t.Fatalf("the simulator decided %d arrivals of %d", next, len(rows))
	}
	outcomes := map[flow.Outcome]int{}
	for _, d := range simDecisions {
		outcomes[d.Outcome]++
	}
	if outcomes[flow.Queued] == 0 || outcomes[flow.RejectedSaturated] == 0 || outcomes[flow.Dispatched] == 0 {
		t.Fatalf("the trace does not exercise flow control: %v", outcomes)
	}
	alone, disagg := 0, 0
	for _, p := range simPicks {
		switch {
		case p.Decode >= 0 && p.Prefill >= 0:
			disagg++
		case p.Decode >= 0:
			alone++
		}
	}
	if alone == 0 || disagg == 0 {
		t.Fatalf("the trace does not exercise the decider: %d requests disaggregated, %d on their decode instance alone", disagg, alone)
	}
	t.Logf("simulator outcomes: %v; %d disaggregated, %d decode alone", outcomes, disagg, alone)

	// servelab router, replaying them: endpoints in the simulator's instance order.
	eps := []*gauged{newGauged(t), newGauged(t), newGauged(t), newGauged(t)}
	var log decisionLog
	r := readyRouter(t, Config{
		Endpoints: []string{"prefill=" + eps[0].URL, "prefill=" + eps[1].URL, "decode=" + eps[2].URL, "decode=" + eps[3].URL},
		Policy: &route.PDProfileHandler{
			Decode: newRoute(), Prefill: newRoute(), Decider: decider, BlockSize: 16,
			DecodeFilter: route.DecodeRoleFilter(), PrefillFilter: route.PrefillRoleFilter(),
		},
		ScrapeInterval: time.Hour, // the test scrapes
		FlowControl:    &fc, Objectives: objectives, OnFlowDecision: log.add,
		Logf: t.Logf,
	})
	ctx := t.Context()
	if r.pd == nil {
		t.Fatal("the router does not run the policy as a P/D handler")
	}
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	var wg sync.WaitGroup
	codes := make([]int, len(rows))
	for _, ev := range events {
		if ev.scrape {
			for i, e := range r.snapshot() {
				eps[i].set(ev.gauges[i])
				if err := r.scrapeOnce(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			r.flowPump()
			continue
		}
		row := rows[ev.row]
		ids := make([]string, row.InputTokens)
		for k := range ids {
			ids[k] = "7"
		}
		body := fmt.Sprintf(`{"model":"m","prompt":[%s],"max_tokens":1,"user":"row-%d"}`, strings.Join(ids, ","), ev.row)
		before := log.len()
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/completions", strings.NewReader(body))
			req.Header.Set(flow.ObjectiveHeader, row.Objective)
			req.Header.Set(flow.FairnessIDHeader, row.FairnessID)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes[ev.row] = resp.StatusCode
		}()
		// The next event waits for this request's decision.
		for log.len() == before {
			if ctx.Err() != nil {
				t.Fatalf("no decision for request %d", ev.row)
			}
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	real := log.ds
	for k := range real {
		real[k].ID-- // the router numbers requests from 1, the simulator from 0
		if real[k].Outcome == flow.Dispatched && real[k].Instance >= 0 {
			// The router's decision indexes the decode candidates; the simulator's, its
			// cluster, whose prefill instances come first.
			real[k].Instance += prefills
		}
	}
	if d := cmp.Diff(simDecisions, real, cmpopts.IgnoreFields(flow.Decision{}, "At")); d != "" {
		t.Errorf("decisions (-simulator +router):\n%s", d)
	}

	// Each request's legs: which endpoints got a body naming it (a prefill endpoint gets
	// only prefill legs, a decode endpoint only decode legs or whole requests).
	realPicks := map[int]pdPicks{}
	for i := range rows {
		realPicks[i] = pdPicks{Decode: -1, Prefill: -1}
	}
	for i, e := range eps {
		e.mu.Lock()
		for _, b := range e.bodies {
			var f struct{ User string }
			var row int
			if err := json.Unmarshal([]byte(b), &f); err != nil || func() error { _, err := fmt.Sscanf(f.User, "row-%d", &row); return err }() != nil {
				t.Errorf("endpoint %d got a body naming no request: %.200s", i, b)
				continue
			}
			p := realPicks[row]
			at := &p.Decode
			if i < prefills {
				at = &p.Prefill
			}
			if *at != -1 {
				t.Errorf("request %d: a second leg to endpoint %d (had %d)", row, i, *at)
			}
			*at = i
			realPicks[row] = p
		}
		e.mu.Unlock()
	}
	for i := range rows {
		if _, ok := simPicks[i]; !ok {
			t.Fatalf("the simulator recorded no request %d", i)
		}
	}
	// A refused request has no instance in the simulator's record (-1), and no leg here.
	if d := cmp.Diff(simPicks, realPicks); d != "" {
		t.Errorf("each request's decode and prefill instances (-simulator +router):\n%s", d)
	}
	for i, c := range codes {
		want := http.StatusOK
		for _, d := range simDecisions {
			if d.ID == uint64(i) && d.Outcome.HTTPStatus() != 0 {
				want = d.Outcome.HTTPStatus()
			}
		}
		if c != want {
			t.Errorf("request %d (%s): status %d, want %d", i, rows[i].Objective, c, want)
		}
	}
}
