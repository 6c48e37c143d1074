package router

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/route"
)

// TestParseEndpointKVEvents: an endpoint's own ZeroMQ KV-event addresses ride in its URL's
// fragment; a bad fragment is an error naming the key or the address.
func TestParseEndpointKVEvents(t *testing.T) {
	for _, tc := range []struct {
		in, u, pub, replay, err string
	}{
		{in: "http://127.0.0.1:8001", u: "http://127.0.0.1:8001"},
		{in: "http://127.0.0.1:8001#kv-events=tcp://127.0.0.1:5557", u: "http://127.0.0.1:8001", pub: "tcp://127.0.0.1:5557"},
		{in: "http://h:1#kv-events=tcp://h:2&kv-events-replay=tcp://h:3", u: "http://h:1", pub: "tcp://h:2", replay: "tcp://h:3"},
		{in: "http://h:1#kv-event=tcp://h:2", err: `fragment key "kv-event"`},
		{in: "http://h:1#kv-events=h:2", err: `kv-events "h:2": want tcp://HOST:PORT`},
		{in: "http://h:1#kv-events-replay=tcp://h:3", err: "kv-events-replay needs kv-events"},
		{in: "http://h:1#kv-events=tcp://h:2&kv-events=tcp://h:4", err: "kv-events given twice"},
	} {
		u, pub, replay, err := ParseEndpointKVEvents(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if d := cmp.Diff([]string{tc.u, tc.pub, tc.replay}, []string{u, pub, replay}); d != "" {
			t.Errorf("%s (-want +got):\n%s", tc.in, d)
		}
	}
}

// TestEndpointsKeepKVEventsAddresses: Endpoints gives an endpoint back with its role and
// KV-event addresses, as SetEndpoints took it, so the same list changes nothing.
func TestEndpointsKeepKVEventsAddresses(t *testing.T) {
	in := []string{"decode=http://127.0.0.1:1#kv-events=tcp://127.0.0.1:2&kv-events-replay=tcp://127.0.0.1:3", "http://127.0.0.1:4"}
	p, err := route.Parse("least-request", policies.Env{BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Endpoints: in, Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if d := cmp.Diff(in, r.Endpoints()); d != "" {
		t.Errorf("Endpoints (-want +got):\n%s", d)
	}
}
