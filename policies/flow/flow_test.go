package flow

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
)

func views(waiting ...int) []serving.InstanceView {
	v := make([]serving.InstanceView, len(waiting))
	for i, w := range waiting {
		v[i] = serving.InstanceView{Index: i, Waiting: w}
	}
	return v
}

func TestSaturation(t *testing.T) {
	c := Defaults
	for _, tc := range []struct {
		name  string
		views []serving.InstanceView
		want  float64
	}{
		{"none", nil, 1},
		{"idle", views(0, 0), 0},
		{"queue", views(5, 0), 0.5},
		{"kv dominates", []serving.InstanceView{{Waiting: 1, KVUsage: 0.8}, {Waiting: 10}}, 1.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.Saturation(tc.views); got != tc.want {
				t.Errorf("Saturation = %v, want %v", got, tc.want)
			}
		})
	}
}

type step struct {
	arrive  *Request // nil: pump
	waiting []int    // the views for this step
}

func req(id uint64, flow string, prio int, at float64) *Request {
	return &Request{ID: id, Flow: FlowKey{ID: flow, Priority: prio}, Enqueued: at}
}

// run drives a controller and returns the outcomes by id and the dispatch order.
func run(t *testing.T, cfg Config, steps []step) (map[uint64]Outcome, []uint64) {
	t.Helper()
	c := New(cfg)
	out := map[uint64]Outcome{}
	var order []uint64
	route := func(Request) int { return 0 }
	for k, s := range steps {
		v := views(s.waiting...)
		now := float64(k)
		if s.arrive != nil {
			d := c.Arrive(*s.arrive, now, v, route)
			out[d.ID] = d.Outcome
			if d.Outcome == Dispatched {
				order = append(order, d.ID)
			}
			continue
		}
		for _, r := range c.Expire(now) {
			out[r.ID] = EvictedTTL
		}
		for _, d := range c.Pump(now, v, route) {
			out[d.ID] = Dispatched
			order = append(order, d.ID)
		}
	}
	return out, order
}

func TestController(t *testing.T) {
	sat := []int{5} // one endpoint, saturated
	free := []int{0}
	for _, tc := range []struct {
		name      string
		cfg       func(*Config)
		steps     []step
		want      map[uint64]Outcome
		wantOrder []uint64
	}{
		{
			name: "unsaturated dispatches at once",
			steps: []step{
				{arrive: req(1, "a", 0, 0), waiting: free},
				{arrive: req(2, "a", -1, 1), waiting: free},
			},
			want:      map[uint64]Outcome{1: Dispatched, 2: Dispatched},
			wantOrder: []uint64{1, 2},
		},
		{
			name: "saturated: critical queued, sheddable rejected, bands by priority",
			steps: []step{
				{arrive: req(1, "a", 0, 0), waiting: sat},
				{arrive: req(2, "a", -1, 1), waiting: sat},
				{arrive: req(3, "b", 1, 2), waiting: sat},
				{waiting: []int{3}}, // 0.6 + 1 + 1 ... : two dispatches fill it again
			},
			want:      map[uint64]Outcome{1: Dispatched, 2: RejectedSaturated, 3: Dispatched},
			wantOrder: []uint64{3, 1},
		},
		{
			name: "sheddable queued behind every band above it",
			cfg:  func(c *Config) { c.Sheddable = "queue" },
			steps: []step{
				{arrive: req(1, "a", -1, 0), waiting: sat},
				{arrive: req(2, "a", 0, 1), waiting: sat},
				{waiting: free},
			},
			want:      map[uint64]Outcome{1: Dispatched, 2: Dispatched},
			wantOrder: []uint64{2, 1},
		},
		{
			name: "pump stops when its own dispatches saturate the pool",
			steps: []step{
				{arrive: req(1, "a", 0, 0), waiting: sat},
				{arrive: req(2, "a", 0, 1), waiting: sat},
				{arrive: req(3, "a", 0, 2), waiting: sat},
				{waiting: []int{3}},
			},
			want:      map[uint64]Outcome{1: Dispatched, 2: Dispatched, 3: Queued},
			wantOrder: []uint64{1, 2},
		},
		{
			name: "global-strict serves the oldest head across flows",
			steps: []step{
				{arrive: req(1, "a", 0, 0), waiting: sat},
				{arrive: req(2, "a", 0, 1), waiting: sat},
				{arrive: req(3, "b", 0, 2), waiting: sat},
				{waiting: free},
			},
			want:      map[uint64]Outcome{1: Dispatched, 2: Dispatched, 3: Dispatched},
			wantOrder: []uint64{1, 2, 3},
		},
		{
			name: "round-robin alternates flows",
			cfg:  func(c *Config) { c.Fairness = "round-robin" },
			steps: []step{
				{arrive: req(1, "a", 0, 0), waiting: sat},
				{arrive: req(2, "a", 0, 1), waiting: sat},
				{arrive: req(3, "b", 0, 2), waiting: sat},
				{waiting: free},
			},
			want:      map[uint64]Outcome{1: Dispatched, 2: Dispatched, 3: Dispatched},
			wantOrder: []uint64{1, 3, 2},
		},
		{
			name: "band capacity rejects with 429",
			cfg:  func(c *Config) { c.MaxQueued = 1 },
			steps: []step{
				{arrive: req(1, "a", 0, 0), waiting: sat},
				{arrive: req(2, "b", 0, 1), waiting: sat},
				{arrive: req(3, "b", 1, 2), waiting: sat},
			},
			want: map[uint64]Outcome{1: Queued, 2: RejectedCapacity, 3: Queued},
		},
		{
			name: "ttl evicts the request that waited too long",
			cfg:  func(c *Config) { c.RequestTTL = 2.5 },
			steps: []step{
				{arrive: req(1, "a", 0, 0), waiting: sat},
				{arrive: req(2, "a", 0, 1), waiting: sat},
				{waiting: sat},
				{waiting: free},
			},
			want:      map[uint64]Outcome{1: EvictedTTL, 2: Dispatched},
			wantOrder: []uint64{2},
		},
		{
			name: "a new arrival does not pass queued requests of its band",
			steps: []step{
				{arrive: req(1, "a", 0, 0), waiting: sat},
				{arrive: req(2, "a", 0, 1), waiting: free},
				{waiting: free},
			},
			want:      map[uint64]Outcome{1: Dispatched, 2: Dispatched},
			wantOrder: []uint64{1, 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Defaults
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			got, order := run(t, cfg, tc.steps)
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("outcomes (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.wantOrder, order); d != "" {
				t.Errorf("dispatch order (-want +got):\n%s", d)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	c := New(Defaults)
	v := views(5)
	c.Arrive(*req(1, "a", 0, 0), 0, v, func(Request) int { return 0 })
	if !c.Remove(1, FlowKey{ID: "a"}) || c.Len() != 0 {
		t.Fatalf("Remove of a queued request: len %d", c.Len())
	}
	if c.Remove(1, FlowKey{ID: "a"}) {
		t.Fatal("Remove of a request no longer queued returned true")
	}
}

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("gie:fairness=round-robin,ttl_s=30,max_queued=100")
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults
	want.Fairness, want.RequestTTL, want.MaxQueued = "round-robin", 30, 100
	if d := cmp.Diff(want, c); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	back, err := ParseConfig(c.Spec())
	if err != nil || back != c {
		t.Errorf("Spec %q reads back as %+v, %v", c.Spec(), back, err)
	}
	for _, bad := range []string{"fifo", "gie:fairness=wfq", "gie:queue_depth_threshold=0", "gie:sheddable=drop", "gie:ttl=3"} {
		if _, err := ParseConfig(bad); err == nil {
			t.Errorf("ParseConfig(%q) accepted", bad)
		}
	}
	if _, err := ParseObjectives([]string{"critical=1", "critical=2"}); err == nil {
		t.Error("an objective given twice was accepted")
	}
	o, err := ParseObjectives([]string{"critical=1", "sheddable=-1"})
	if err != nil || o.Priority("critical") != 1 || o.Priority("sheddable") != -1 || o.Priority("other") != 0 {
		t.Errorf("ParseObjectives = %v, %v", o, err)
	}
}
