package main

import (
	"math"
	"strings"
	"testing"
)

func TestParseKVEventLag(t *testing.T) {
	text := `# HELP servelab_router_kv_event_lag_seconds x
# TYPE servelab_router_kv_event_lag_seconds histogram
servelab_router_kv_event_lag_seconds_bucket{le="0.001"} 2
servelab_router_kv_event_lag_seconds_bucket{le="+Inf"} 4
servelab_router_kv_event_lag_seconds_sum 0.008
servelab_router_kv_event_lag_seconds_count 4
servelab_router_shed_total 0
`
	mean, n, err := parseKVEventLag(strings.NewReader(text))
	if err != nil || n != 4 || math.Abs(mean-0.002) > 1e-12 {
		t.Errorf("mean %v over %d batches, %v; want 0.002 over 4", mean, n, err)
	}
	if _, _, err := parseKVEventLag(strings.NewReader("servelab_router_shed_total 0\n")); err == nil || !strings.Contains(err.Error(), "kv_event_lag") {
		t.Errorf("a router without the histogram: error %v, want one naming it", err)
	}
}
