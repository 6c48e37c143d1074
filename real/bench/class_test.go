package bench

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/policies/flow"
	"servelab/traces"
)

// TestClassesReachTheRouter: a row's objective and fairness id go out as GIE's headers,
// its priority as vLLM's body field, and the records and summary carry the class.
func TestClassesReachTheRouter(t *testing.T) {
	s, url := startStub(t, time.Millisecond, time.Millisecond)
	trace := []traces.Row{
		{InputTokens: 20, OutputTokens: 3, Objective: "critical", FairnessID: "tenant-a"},
		{InputTokens: 21, OutputTokens: 2, Objective: "sheddable", Priority: 5},
		{InputTokens: 22, OutputTokens: 2},
	}
	res, err := Run(context.Background(), Options{Endpoint: url, Model: "m", Trace: &rows{trace}, VocabSize: 50, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	type sent struct {
		Objective, Fairness string
		Priority            int
	}
	var got []sent
	for i, h := range s.headers {
		got = append(got, sent{h.Get(flow.ObjectiveHeader), h.Get(flow.FairnessIDHeader), s.bodies[i].Priority})
	}
	want := []sent{{"critical", "tenant-a", 0}, {"sheddable", "", 5}, {"", "", 0}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("requests sent (-want +got):\n%s", d)
	}
	for i, r := range res.Records {
		if r.Objective != trace[r.ID].Objective {
			t.Errorf("record %d: objective %q, want %q", i, r.Objective, trace[r.ID].Objective)
		}
	}
	if c := res.Summary.Classes; len(c) != 2 || c["critical"].Completed != 1 || c["sheddable"].Completed != 1 {
		t.Errorf("summary classes %+v", c)
	}
}
