// Package flow is flow control as the Gateway API Inference Extension's endpoint picker
// does it (pkg/epp/flowcontrol, pkg/epp/requestcontrol/admission.go,
// pkg/epp/saturationdetector): a request carries an objective (GIE's InferenceObjective:
// a name and a priority, higher is more important, negative is sheddable) and a flow
// (its fairness id); while every endpoint is saturated the router holds requests instead
// of forwarding them, dispatches held requests by priority band (highest first), between
// flows of one band by a fairness policy and within a flow by an ordering policy, and
// answers 429 to sheddable requests first.
//
// The Controller is pure: no clock (times are seconds passed in), no I/O, no goroutines.
// The simulator's router and servelab router drive the same Controller with the same
// calls (Arrive, Pump, Expire, Remove), so they take the same decisions on the same views.
package flow

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"servelab/policies"
	"servelab/serving"
)

// ObjectiveHeader names the request's InferenceObjective, as GIE's EPP reads it
// (x-gateway-inference-objective; llm-d also accepts x-llm-d-inference-objective).
const ObjectiveHeader = "x-gateway-inference-objective"

// FairnessIDHeader names the request's flow within its priority band, as GIE's EPP reads
// it (x-gateway-inference-fairness-id). Requests without one share the flow "".
const FairnessIDHeader = "x-gateway-inference-fairness-id"

// IsSheddable is GIE's requtil.IsSheddable: a negative priority may be dropped under load.
func IsSheddable(priority int) bool { return priority < 0 }

// EnginePriority maps GIE's priority (higher is more important) onto vLLM's request
// field priority (lower runs first under --scheduling-policy priority, servelab engine
// --batch priority): its negation, so critical work (1) runs before standard (0) before
// sheddable (-1) in the engine as in the router.
func EnginePriority(objectivePriority int) int { return -objectivePriority }

// Objectives maps InferenceObjective names to their spec.priority. A request naming no
// objective, or one not in the map, has priority 0, as GIE's EPP gives a request whose
// objective is not found.
type Objectives map[string]int

// Priority is the priority of the objective named name (0 when unknown).
func (o Objectives) Priority(name string) int { return o[name] }

// ParseObjective parses "NAME=PRIORITY" (an InferenceObjective's metadata.name and
// spec.priority).
func ParseObjective(s string) (string, int, error) {
	name, p, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return "", 0, fmt.Errorf("objective %q: want NAME=PRIORITY (e.g. critical=1, sheddable=-1)", s)
	}
	v, err := strconv.Atoi(strings.TrimSpace(p))
	if err != nil {
		return "", 0, fmt.Errorf("objective %q: priority %q is not an integer", s, p)
	}
	return name, v, nil
}

// ParseObjectives parses a list of "NAME=PRIORITY", refusing a name given twice.
func ParseObjectives(list []string) (Objectives, error) {
	if len(list) == 0 {
		return nil, nil
	}
	o := Objectives{}
	for _, s := range list {
		name, p, err := ParseObjective(s)
		if err != nil {
			return nil, err
		}
		if _, dup := o[name]; dup {
			return nil, fmt.Errorf("objective %q given twice", name)
		}
		o[name] = p
	}
	return o, nil
}

// FlowKey identifies a flow as GIE's flowcontrol.FlowKey: its fairness id and priority.
type FlowKey struct {
	ID       string
	Priority int
}

// Request is what the controller knows of one request.
type Request struct {
	// ID is the driver's id of the request (the trace row in the simulator).
	ID   uint64
	Flow FlowKey
	// Enqueued is when the request reached the router, in the driver's seconds.
	Enqueued float64
}

// Outcome is what became of a request, in GIE's types.QueueOutcome terms.
type Outcome uint8

const (
	// Dispatched: the request goes to an endpoint now.
	Dispatched Outcome = iota
	// Queued: the request waits for capacity.
	Queued
	// RejectedSaturated: a sheddable request arrived while the pool was saturated
	// (GIE's rejectIfSheddableAndSaturated): 429.
	RejectedSaturated
	// RejectedCapacity: the request's priority band held max_queued requests
	// (QueueOutcomeRejectedCapacity): 429.
	RejectedCapacity
	// EvictedTTL: the request waited longer than the queue TTL (QueueOutcomeEvictedTTL): 503.
	EvictedTTL
)

func (o Outcome) String() string {
	switch o {
	case Dispatched:
		return "dispatched"
	case Queued:
		return "queued"
	case RejectedSaturated:
		return "rejected-saturated"
	case RejectedCapacity:
		return "rejected-capacity"
	case EvictedTTL:
		return "evicted-ttl"
	}
	return "unknown"
}

// HTTPStatus is the status a router answers a request refused with this outcome (GIE's
// errcommon codes: ResourceExhausted is 429, ServiceUnavailable 503); 0 for an outcome
// that is not a refusal.
func (o Outcome) HTTPStatus() int {
	switch o {
	case RejectedSaturated, RejectedCapacity:
		return 429
	case EvictedTTL:
		return 503
	}
	return 0
}

// Message is the error message a refused request gets.
func (o Outcome) Message() string {
	switch o {
	case RejectedSaturated:
		return "system saturated, sheddable request dropped"
	case RejectedCapacity:
		return "flow control queue at capacity"
	case EvictedTTL:
		return "request timed out in flow control queue"
	}
	return ""
}

// Decision records one decision, for logs and the tests that compare the two worlds.
type Decision struct {
	ID      uint64
	Flow    FlowKey
	Outcome Outcome
	// At is when the decision was taken (driver seconds).
	At float64
	// Instance is the endpoint a Dispatched request went to (the route policy's answer);
	// -1 otherwise.
	Instance int
}

// Config is the controller's parameters, under GIE's names where GIE has them.
type Config struct {
	// QueueDepthThreshold and KVCacheUtilThreshold are GIE's utilization detector's: an
	// endpoint's saturation is max(waiting/QueueDepthThreshold, kv/KVCacheUtilThreshold),
	// the pool's is the mean over endpoints, and the pool is saturated at 1 or more.
	QueueDepthThreshold  int
	KVCacheUtilThreshold float64
	// Fairness picks the flow to serve next within a band: "global-strict" (GIE's
	// global-strict-fairness-policy, its default: the oldest head of any flow) or
	// "round-robin" (round-robin-fairness-policy: flows in turn).
	Fairness string
	// Ordering picks the request within a flow: "fcfs" (fcfs-ordering-policy).
	Ordering string
	// RequestTTL, if positive, evicts a request queued longer (GIE's DefaultRequestTTL),
	// in seconds; 0 keeps it until dispatched or the client goes away.
	RequestTTL float64
	// MaxQueued, if positive, caps the requests queued in one priority band (GIE caps a
	// band's bytes, PriorityBandConfig.MaxBytes); an arrival beyond it is rejected.
	MaxQueued int
	// Sheddable is "reject" (a sheddable request arriving while the pool is saturated is
	// answered 429 at once: GIE's rejectIfSheddableAndSaturated, which its
	// LegacyAdmissionController applies, pkg/epp/requestcontrol/admission.go) or "queue"
	// (it waits in its band behind every band above it, as GIE's
	// FlowControlAdmissionController enqueues every request).
	Sheddable string
}

// Defaults are GIE's: queue depth 5, KV 0.8 (pkg/epp/common/config), global-strict,
// FCFS, no TTL, sheddable requests rejected while saturated.
var Defaults = Config{QueueDepthThreshold: 5, KVCacheUtilThreshold: 0.8, Fairness: "global-strict", Ordering: "fcfs", Sheddable: "reject"}

// Params document the spec's parameters for --help.
var Params = []policies.Param{
	{Name: "queue_depth_threshold", Default: "5", Doc: "waiting requests at which an endpoint counts as saturated (GIE utilization-detector queueDepthThreshold)"},
	{Name: "kv_cache_util_threshold", Default: "0.8", Doc: "KV-cache usage at which an endpoint counts as saturated (kvCacheUtilThreshold)"},
	{Name: "fairness", Default: "global-strict", Doc: "between flows of one priority: global-strict (oldest head first) or round-robin"},
	{Name: "ordering", Default: "fcfs", Doc: "within a flow: fcfs"},
	{Name: "ttl_s", Default: "0", Doc: "seconds a request may wait queued before a 503 (GIE defaultRequestTTL); 0 = no limit"},
	{Name: "max_queued", Default: "0", Doc: "requests one priority band may hold before arrivals get 429; 0 = no limit"},
	{Name: "sheddable", Default: "reject", Doc: "a sheddable (negative priority) request arriving while saturated: reject (429) or queue"},
}

// Name is the one flow-control policy's spec name: GIE's utilization detector gating a
// priority-banded queue.
const Name = "gie"

// ParseConfig reads a spec such as "gie:fairness=round-robin,ttl_s=30".
func ParseConfig(text string) (Config, error) {
	spec, err := policies.ParseSpec(text)
	if err != nil {
		return Config{}, err
	}
	return ConfigFromSpec(spec)
}

// ConfigFromSpec reads a parsed spec.
func ConfigFromSpec(spec policies.Spec) (Config, error) {
	if spec.Name != Name {
		return Config{}, fmt.Errorf("unknown flow-control policy %q (known: %s)", spec.Name, Name)
	}
	p := policies.NewParams(spec)
	c := Config{
		QueueDepthThreshold:  p.Int("queue_depth_threshold", Defaults.QueueDepthThreshold),
		KVCacheUtilThreshold: p.Float("kv_cache_util_threshold", Defaults.KVCacheUtilThreshold),
		Fairness:             p.String("fairness", Defaults.Fairness),
		Ordering:             p.String("ordering", Defaults.Ordering),
		RequestTTL:           p.Float("ttl_s", 0),
		MaxQueued:            p.Int("max_queued", 0),
		Sheddable:            p.String("sheddable", Defaults.Sheddable),
	}
	p.Check(c.QueueDepthThreshold > 0, "queue_depth_threshold", "a positive integer")
	p.Check(c.KVCacheUtilThreshold > 0 && c.KVCacheUtilThreshold <= 1, "kv_cache_util_threshold", "in (0, 1]")
	p.Check(c.Fairness == "global-strict" || c.Fairness == "round-robin", "fairness", "global-strict or round-robin")
	p.Check(c.Ordering == "fcfs", "ordering", "fcfs")
	p.Check(c.RequestTTL >= 0 && !math.IsInf(c.RequestTTL, 0), "ttl_s", "0 or a positive number of seconds")
	p.Check(c.MaxQueued >= 0, "max_queued", "0 or more")
	p.Check(c.Sheddable == "reject" || c.Sheddable == "queue", "sheddable", "reject or queue")
	if err := p.Err(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Spec writes the config back as a spec ParseConfig reads.
func (c Config) Spec() string {
	return fmt.Sprintf("%s:queue_depth_threshold=%d,kv_cache_util_threshold=%s,fairness=%s,ordering=%s,ttl_s=%s,max_queued=%d,sheddable=%s",
		Name, c.QueueDepthThreshold, strconv.FormatFloat(c.KVCacheUtilThreshold, 'g', -1, 64), c.Fairness, c.Ordering,
		strconv.FormatFloat(c.RequestTTL, 'g', -1, 64), c.MaxQueued, c.Sheddable)
}

// Saturation is GIE's utilization detector over the views: the mean over endpoints of
// max(waiting/QueueDepthThreshold, KVUsage/KVCacheUtilThreshold); 1 with no endpoint.
func (c *Config) Saturation(views []serving.InstanceView) float64 {
	if len(views) == 0 {
		return 1
	}
	var total float64
	for i := range views {
		q := float64(views[i].Waiting) / float64(c.QueueDepthThreshold)
		kv := views[i].KVUsage / c.KVCacheUtilThreshold
		total += max(q, kv)
	}
	return total / float64(len(views))
}

// flowQueue is one flow's FCFS queue.
type flowQueue struct {
	key   FlowKey
	items []Request
}

// band is one priority level's flows, in the order they first queued (round-robin's turn
// order).
type band struct {
	priority int
	flows    []*flowQueue
	next     int // round-robin: the index of the flow to serve next
	n        int
}

// Controller holds queued requests and decides.
type Controller struct {
	cfg   Config
	bands []*band // by priority, highest first
	n     int
}

// New builds a controller.
func New(cfg Config) *Controller {
	return &Controller{cfg: cfg}
}

// Config returns the controller's parameters.
func (c *Controller) Config() Config { return c.cfg }

// Len is the number of queued requests.
func (c *Controller) Len() int { return c.n }

// QueuedByPriority returns the queued requests of each priority.
func (c *Controller) QueuedByPriority() map[int]int {
	m := map[int]int{}
	for _, b := range c.bands {
		if b.n > 0 {
			m[b.priority] = b.n
		}
	}
	return m
}

// Saturated says whether the pool is saturated on views.
func (c *Controller) Saturated(views []serving.InstanceView) bool {
	return c.cfg.Saturation(views) >= 1
}

// Arrive decides a new request at now: Dispatched (routed with route, and counted as
// waiting on its endpoint in views, as Pump does) when the pool is not saturated and
// nothing of its priority or above waits (queued requests go first: a band's flows are
// FIFO and the bands strict); Queued; or a rejection.
func (c *Controller) Arrive(r Request, now float64, views []serving.InstanceView, route func(Request) int) Decision {
	d := Decision{ID: r.ID, Flow: r.Flow, At: now, Instance: -1}
	saturated := c.Saturated(views)
	switch {
	case saturated && IsSheddable(r.Flow.Priority) && c.cfg.Sheddable == "reject":
		d.Outcome = RejectedSaturated
	case !saturated && !c.waitingAtOrAbove(r.Flow.Priority):
		d.Outcome = Dispatched
		d.Instance = route(r)
		if d.Instance >= 0 && d.Instance < len(views) {
			views[d.Instance].Waiting++
		}
	default:
		b := c.band(r.Flow.Priority)
		if c.cfg.MaxQueued > 0 && b.n >= c.cfg.MaxQueued {
			d.Outcome = RejectedCapacity
			break
		}
		f := b.flow(r.Flow)
		f.items = append(f.items, r)
		b.n++
		c.n++
		d.Outcome = Queued
	}
	return d
}

// waitingAtOrAbove says whether any request of priority p or higher is queued.
func (c *Controller) waitingAtOrAbove(p int) bool {
	for _, b := range c.bands {
		if b.priority < p {
			break
		}
		if b.n > 0 {
			return true
		}
	}
	return false
}

// Next pops the request to dispatch now: none while the pool is saturated on views; else
// the highest band's pick by the fairness policy.
func (c *Controller) Next(views []serving.InstanceView) (Request, bool) {
	if c.n == 0 || c.Saturated(views) {
		return Request{}, false
	}
	for _, b := range c.bands {
		if b.n == 0 {
			continue
		}
		fi := c.pickFlow(b)
		f := b.flows[fi]
		r := f.items[0]
		f.items = f.items[1:]
		if len(f.items) == 0 {
			f.items = nil
		}
		b.n--
		c.n--
		if c.cfg.Fairness == "round-robin" {
			b.next = fi + 1
		}
		return r, true
	}
	return Request{}, false
}

// pickFlow returns the index of the flow b serves next; b holds a request.
func (c *Controller) pickFlow(b *band) int {
	if c.cfg.Fairness == "round-robin" {
		for k := range b.flows {
			i := (b.next + k) % len(b.flows)
			if len(b.flows[i].items) > 0 {
				return i
			}
		}
	}
	// global-strict: the flow whose head arrived first (ties: the lower id).
	best := -1
	for i, f := range b.flows {
		if len(f.items) == 0 {
			continue
		}
		if best < 0 || before(f.items[0], b.flows[best].items[0]) {
			best = i
		}
	}
	return best
}

func before(a, b Request) bool {
	if a.Enqueued != b.Enqueued {
		return a.Enqueued < b.Enqueued
	}
	return a.ID < b.ID
}

// Pump dispatches queued requests while the pool is not saturated on views, routing each
// with route (which returns the endpoint's index in views, or -1 if none). Between
// scrapes a router's views do not see what it just sent, so Pump counts each dispatched
// request as waiting on its endpoint in views (the caller's copy) until the next scrape
// replaces them; otherwise one unsaturated reading would release the whole queue at once.
func (c *Controller) Pump(now float64, views []serving.InstanceView, route func(Request) int) []Decision {
	var out []Decision
	for {
		r, ok := c.Next(views)
		if !ok {
			return out
		}
		i := route(r)
		if i >= 0 && i < len(views) {
			views[i].Waiting++
		}
		out = append(out, Decision{ID: r.ID, Flow: r.Flow, Outcome: Dispatched, At: now, Instance: i})
	}
}

// Expire evicts the requests queued longer than the TTL at now, oldest first.
func (c *Controller) Expire(now float64) []Request {
	if !(c.cfg.RequestTTL > 0) || c.n == 0 {
		return nil
	}
	var out []Request
	for _, b := range c.bands {
		for _, f := range b.flows {
			k := 0
			for k < len(f.items) && now-f.items[k].Enqueued >= c.cfg.RequestTTL {
				k++
			}
			if k > 0 {
				out = append(out, f.items[:k]...)
				f.items = slices.Clone(f.items[k:])
				b.n -= k
				c.n -= k
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return before(out[i], out[j]) })
	return out
}

// Remove takes a queued request out (its client went away); false if it is not queued.
func (c *Controller) Remove(id uint64, key FlowKey) bool {
	for _, b := range c.bands {
		if b.priority != key.Priority {
			continue
		}
		for _, f := range b.flows {
			if f.key != key {
				continue
			}
			for k := range f.items {
				if f.items[k].ID == id {
					f.items = slices.Delete(f.items, k, k+1)
					b.n--
					c.n--
					return true
				}
			}
		}
	}
	return false
}

// band returns priority p's band, making it (GIE provisions bands dynamically too).
func (c *Controller) band(p int) *band {
	i := sort.Search(len(c.bands), func(i int) bool { return c.bands[i].priority <= p })
	if i < len(c.bands) && c.bands[i].priority == p {
		return c.bands[i]
	}
	b := &band{priority: p}
	c.bands = slices.Insert(c.bands, i, b)
	return b
}

func (b *band) flow(k FlowKey) *flowQueue {
	for _, f := range b.flows {
		if f.key == k {
			return f
		}
	}
	f := &flowQueue{key: k}
	b.flows = append(b.flows, f)
	return f
}
