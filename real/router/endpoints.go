package router

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"servelab/policies/route"
	"servelab/serving"
)

// The endpoint set may change while the router runs (SetEndpoints, which Kubernetes
// discovery calls as pods become ready and go away). Three things stay consistent through
// a change:
//   - the routing policy's instance indexes: an endpoint keeps its InstanceView.Index for as
//     long as it is in the set, a removed endpoint's index is cleared in the policy
//     (route.InstanceRemover) in the same critical section that takes the endpoint out, and
//     only then may a later endpoint reuse it (the lowest free index, so indexes stay as
//     small as the static path's positions);
//   - routing: pick reads the set under the same mutex, so no decision sees a removed
//     endpoint once the policy has forgotten it, and a request already sent to one finishes
//     there (its connection is the HTTP client's, not the endpoint's);
//   - the endpoint's loops: its /metrics scrape and /v1/kv_events subscription run under a
//     context of their own, cancelled on removal; SetEndpoints returns once they ended.

// ParseEndpoint splits an endpoint as Config.Endpoints and SetEndpoints take it: a base
// URL, or ROLE=URL with ROLE an llm-d role (the pod label llm-d.ai/role's values: prefill,
// decode, both, prefill-decode). An endpoint without a role is what llm-d calls
// unlabelled: its decode-filter passes it, its prefill-filter does not.
func ParseEndpoint(s string) (role, u string, err error) {
	s = strings.TrimSpace(s)
	if r, rest, ok := strings.Cut(s, "="); ok && !strings.Contains(r, "/") {
		if !slices.Contains(route.Roles, r) {
			return "", "", fmt.Errorf("router: endpoint %q: role %q is not one of %s", s, r, strings.Join(route.Roles, ", "))
		}
		role, s = r, rest
	}
	return role, s, nil
}

// endpointKey is the endpoint's identity in the set: its role and URL (with its KV-event
// addresses, so an endpoint whose addresses change is followed anew).
func endpointKey(role, u string) string {
	if role == "" {
		return u
	}
	return role + "=" + u
}

// key is the endpoint's endpointKey, as SetEndpoints and Endpoints name it.
func (e *endpoint) key() string {
	u := e.url
	if e.kvEvents != "" {
		u += "#" + KVEventsFragment(e.kvEvents, e.kvReplay)
	}
	return endpointKey(e.role, u)
}

// KVEventsFragment is the URL fragment that gives an endpoint its own ZeroMQ KV-event
// addresses: kv-events=PUB[&kv-events-replay=REPLAY] (ParseEndpointKVEvents).
func KVEventsFragment(pub, replay string) string {
	s := "kv-events=" + pub
	if replay != "" {
		s += "&kv-events-replay=" + replay
	}
	return s
}

// ParseEndpointKVEvents splits an endpoint URL from its KV-event fragment,
// URL#kv-events=tcp://HOST:PORT[&kv-events-replay=tcp://HOST:PORT]: the addresses of the
// engine's vLLM publisher (its --kv-events-config endpoint and replay_endpoint), for
// engines that do not share one port on hosts of their own (servelab up runs them all on
// 127.0.0.1). An endpoint without a fragment has "" for both.
func ParseEndpointKVEvents(s string) (u, pub, replay string, err error) {
	u, frag, ok := strings.Cut(s, "#")
	if !ok {
		return s, "", "", nil
	}
	for _, kv := range strings.Split(frag, "&") {
		k, v, _ := strings.Cut(kv, "=")
		var dst *string
		switch k {
		case "kv-events":
			dst = &pub
		case "kv-events-replay":
			dst = &replay
		default:
			return "", "", "", fmt.Errorf("router: endpoint %q: fragment key %q: want kv-events=tcp://HOST:PORT and optionally kv-events-replay=tcp://HOST:PORT", s, k)
		}
		if !strings.HasPrefix(v, "tcp://") || !strings.Contains(v[len("tcp://"):], ":") {
			return "", "", "", fmt.Errorf("router: endpoint %q: %s %q: want tcp://HOST:PORT", s, k, v)
		}
		if *dst != "" {
			return "", "", "", fmt.Errorf("router: endpoint %q: %s given twice", s, k)
		}
		*dst = v
	}
	if pub == "" {
		return "", "", "", fmt.Errorf("router: endpoint %q: kv-events-replay needs kv-events, the publisher's address", s)
	}
	return u, pub, replay, nil
}

// newEndpoint checks spec (ParseEndpoint) and makes the endpoint at index i, its loops not
// started.
func (r *Router) newEndpoint(i int, spec string) (*endpoint, error) {
	role, u, err := ParseEndpoint(spec)
	if err != nil {
		return nil, err
	}
	u, pub, replay, err := ParseEndpointKVEvents(u)
	if err != nil {
		return nil, err
	}
	u = strings.TrimRight(u, "/")
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return nil, fmt.Errorf("router: endpoint %q: want an http:// or https:// URL", u)
	}
	parsed, err := url.Parse(u)
	if err != nil || parsed.Host == "" {
		return nil, fmt.Errorf("router: endpoint %q: want an http:// or https:// URL with a host", u)
	}
	return &endpoint{index: i, url: u, role: role, host: parsed.Host, logf: r.cfg.Logf, kvEvents: pub, kvReplay: replay}, nil
}

// startLoops starts the endpoint's scrape loop and, with Config.KVEvents, its KV-event
// subscription, under a context that removing the endpoint or closing the router cancels.
func (r *Router) startLoops(e *endpoint) {
	ctx, cancel := context.WithCancel(r.ctx)
	e.stop = cancel
	e.loops.Add(1)
	r.wg.Add(1)
	go func() { defer r.wg.Done(); defer e.loops.Done(); r.scrapeLoop(ctx, e) }()
	if r.cfg.KVEvents || r.zmqAddrs(e) != nil {
		e.loops.Add(1)
		r.wg.Add(1)
		go func() { defer r.wg.Done(); defer e.loops.Done(); r.kvLoop(ctx, e) }()
	}
}

// snapshot is the current endpoint set; the slice is never modified, so it may be read
// without the lock.
func (r *Router) snapshot() []*endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.endpoints
}

// Endpoints returns the router's endpoints as SetEndpoints takes them (URL, or ROLE=URL),
// in index order.
func (r *Router) Endpoints() []string {
	eps := r.snapshot()
	out := make([]string, len(eps))
	for i, e := range eps {
		out[i] = e.key()
	}
	return out
}

// errClosed is SetEndpoints' answer after Close.
var errClosed = errors.New("router: closed")

// SetEndpoints makes urls (engines' base URLs, or ROLE=URL, as Config.Endpoints) the
// router's endpoint set (an endpoint whose role changes is removed and added anew):
// endpoints not yet in it are added, get the lowest free indexes in the order given, and start being scraped (and followed for KV events); endpoints not in urls are removed:
// the policy forgets their state, they are routed no more requests, and their loops stop
// before SetEndpoints returns, while requests already sent to them finish. Endpoints in
// both keep their index, views and prefix index. A bad URL changes nothing. It is safe to
// call concurrently with routing and with itself.
func (r *Router) SetEndpoints(urls []string) error {
	want := make(map[string]bool, len(urls))
	roleOf := make(map[string]string, len(urls))
	var order []string
	for _, u := range urls {
		e, err := r.newEndpoint(0, u)
		if err != nil {
			return err
		}
		if role, seen := roleOf[e.url]; seen && role != e.role {
			return fmt.Errorf("router: endpoint %s given with two roles, %q and %q", e.url, role, e.role)
		}
		roleOf[e.url] = e.role
		k := e.key()
		if !want[k] {
			want[k] = true
			order = append(order, k)
		}
	}

	r.mu.Lock()
	if r.closed.Load() {
		r.mu.Unlock()
		return errClosed
	}
	var next, added, removed []*endpoint
	have := make(map[string]bool, len(r.endpoints))
	used := make(map[int]bool, len(r.endpoints))
	for _, e := range r.endpoints {
		if k := e.key(); want[k] {
			next = append(next, e)
			have[k] = true
			used[e.index] = true
		} else {
			removed = append(removed, e)
		}
	}
	// Forget the removed endpoints' indexes before any is reused below, and their decision
	// series before an endpoint of the same URL may make it anew.
	rm, _ := r.cfg.Policy.(route.InstanceRemover)
	for _, e := range removed {
		if rm != nil {
			rm.RemoveInstance(e.index)
		}
		r.decisions.DeleteLabelValues(e.url)
	}
	free := 0
	for _, u := range order {
		if have[u] {
			continue
		}
		for used[free] {
			free++
		}
		e, _ := r.newEndpoint(free, u) // checked above
		used[free] = true
		next = append(next, e)
		added = append(added, e)
	}
	// Views are built in index order, as the simulator's and the static path's are.
	slices.SortFunc(next, func(a, b *endpoint) int { return a.index - b.index })
	r.endpoints = next
	for _, e := range added {
		e.decisions = r.decisions.WithLabelValues(e.url)
		r.startLoops(e)
	}
	r.mu.Unlock()

	for _, e := range removed {
		e.stop()
		e.loops.Wait()
		r.cfg.Logf("endpoint %s removed; requests already sent to it finish there", e.url)
	}
	for _, e := range added {
		r.cfg.Logf("endpoint %s added", e.url)
	}
	return nil
}

// Views returns the routing policy's current view of each healthy endpoint (what pick
// gives it, from the endpoint's /metrics and KV events), by URL.
func (r *Router) Views() map[string]serving.InstanceView {
	out := map[string]serving.InstanceView{}
	for _, e := range r.snapshot() {
		if e.healthy() {
			out[e.url] = e.view()
		}
	}
	return out
}
