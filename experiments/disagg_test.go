package experiments

import (
	"context"
	"testing"
)

// The disaggregated example runs: every cell reports its disaggregated requests, and the
// prefill instance (0) is counted as serving requests rather than flagged as starved.
func TestDisaggExampleRuns(t *testing.T) {
	s, err := Load("examples/pd-disagg.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s.Workload.MaxRequests = 40
	res, err := Run(context.Background(), s, Options{Out: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Cells {
		if c.Status != "done" {
			t.Fatalf("cell %s: %s %s", c.ID, c.Status, c.Error)
		}
		if d := c.Summary.Disaggregation; d == nil || d.Requests == 0 || d.Link != "rdma" {
			t.Errorf("cell %s: disaggregation %+v, want requests over rdma", c.ID, d)
		}
		if len(c.InstanceRequests) != 3 || c.InstanceRequests[0] == 0 {
			t.Errorf("cell %s: instance requests %v, want the prefill instance 0 counted", c.ID, c.InstanceRequests)
		}
	}
	for _, p := range res.Policies {
		for _, st := range p.Starved {
			if st.Instance == 0 {
				t.Errorf("%s: the prefill instance is flagged starved: %v", p.Name(), p.Starved)
			}
		}
	}
}
