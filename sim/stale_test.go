package sim

import (
	"math"
	"strings"
	"testing"

	"servelab/metrics"
	"servelab/serving"
	"servelab/traces"
)

// routedTo runs rows on two instances and returns the instance each request went to, by
// request id.
func routedTo(t *testing.T, router string, scrape, kvDelay float64, rows []traces.Row) []int {
	t.Helper()
	cfg := testConfig(t, 2, router, "vllm", 4096)
	// Every step takes 10 ms whatever it runs: a prefill that starts at 0 ends at 0.01.
	cfg.Latency = affineModel{perStep: 0.01}
	cfg.ScrapeInterval, cfg.KVEventDelay = scrape, kvDelay
	_, recs := runCollect(t, cfg, rows, false)
	got := make([]int, len(rows))
	for _, r := range recs {
		if r.Failed {
			t.Fatalf("request %d failed: %s", r.ID, r.Error)
		}
		got[r.ID] = r.Instance
	}
	return got
}

// TestKVEventDelayHidesRecentPrefixes: the precise prefix-cache scorer sees an instance's
// cached blocks only once the KV events of the step that cached them have reached the
// router (KVEventDelay after the step ends), as servelab router's index does. A second
// request with the first one's prefix, arriving before that, scores no prefix anywhere and
// goes where KV usage is lower, the other instance; arriving after, it follows the prefix.
// With KVEventDelay 0 the router reads the live cache, which holds the blocks from the
// moment the first request's prefill is scheduled (at 0; it ends at 0.01).
func TestKVEventDelayHidesRecentPrefixes(t *testing.T) {
	const router = "weighted:precise-prefix=2,kv=1,prefix=0,queue=0"
	prefix := make([]int64, 16)
	for i := range prefix {
		prefix[i] = int64(i + 1)
	}
	tests := []struct {
		name    string
		delay   float64
		second  float64 // the second request's arrival
		samePod bool
	}{
		{"live cache, during the first prefill", 0, 0.005, true},
		{"2ms delay, during the first prefill", 0.002, 0.005, false},
		{"2ms delay, after the prefill but within the delay", 0.002, 0.0115, false},
		{"2ms delay, after the delay", 0.002, 0.0125, true},
		{"50ms delay, within it", 0.05, 0.055, false},
		{"50ms delay, after it", 0.05, 0.065, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rows := []traces.Row{
				{Arrival: 0, InputTokens: 256, OutputTokens: 40, HashIDs: prefix, HashBlockSize: 16},
				{Arrival: tc.second, InputTokens: 256, OutputTokens: 40, HashIDs: prefix, HashBlockSize: 16},
			}
			got := routedTo(t, router, 0, tc.delay, rows)
			if same := got[0] == got[1]; same != tc.samePod {
				t.Errorf("requests went to instances %v; same instance %v, want %v", got, same, tc.samePod)
			}
		})
	}
}

// TestScrapeIntervalStaleGauges: with the router reading gauges every 50 ms, a request
// routed by KV usage sees the instances as of the last scrape. Request 0 (small, long)
// goes to some instance X; request 1 (large) arrives after the scrape at 0.05, which saw X
// busy, and goes to the other, Y. Request 2 at 0.07 sees, with fresh gauges, Y fuller
// than X and goes to X; on the 0.05 reading Y is still empty and it goes to Y. At 0.11,
// after the scrape at 0.10, both agree again.
func TestScrapeIntervalStaleGauges(t *testing.T) {
	const router = "weighted:kv=1,queue=0,prefix=0"
	tests := []struct {
		name    string
		scrape  float64
		third   float64
		wantOn1 bool // request 2 on request 1's instance (else on request 0's)
	}{
		{"fresh gauges", 0, 0.07, false},
		{"50ms scrapes, before the next scrape", 0.05, 0.07, true},
		{"50ms scrapes, after the next scrape", 0.05, 0.11, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rows := []traces.Row{
				{Arrival: 0.001, InputTokens: 64, OutputTokens: 500},
				{Arrival: 0.06, InputTokens: 512, OutputTokens: 500},
				{Arrival: tc.third, InputTokens: 64, OutputTokens: 10},
			}
			got := routedTo(t, router, tc.scrape, 0, rows)
			if got[0] == got[1] {
				t.Fatalf("requests 0 and 1 both went to instance %d; the test needs them apart", got[0])
			}
			if on1 := got[2] == got[1]; on1 != tc.wantOn1 {
				t.Errorf("requests went to instances %v; request 2 on request 1's instance %v, want %v", got, on1, tc.wantOn1)
			}
		})
	}
}

// TestKVEventIndexMatchesLiveCache: once every event has been applied, the router's index
// holds exactly the hashes in the instance's cache (events are replayed in order, evictions
// included, under a workload that fills and churns the cache).
func TestKVEventIndexMatchesLiveCache(t *testing.T) {
	cfg := testConfig(t, 2, "weighted:precise-prefix=2,kv=1,prefix=0,queue=0", "vllm", 96)
	cfg.KVEventDelay = 0.003
	s, err := newSimulation(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.run(&sliceReader{rows: randomRows(400, 5)}); err != nil {
		t.Fatal(err)
	}
	for i := range s.instances {
		x := s.instances[i].kv
		x.catchUp(math.Inf(1))
		live := s.instances[i].core.KV().CachedHashes()
		if x.known.Len() != len(live) {
			t.Errorf("instance %d: the router's index holds %d hashes, the cache %d", i, x.known.Len(), len(live))
		}
		for _, h := range live {
			if !x.known.Has(h) {
				t.Errorf("instance %d: hash %d is cached but not in the router's index", i, h)
				break
			}
		}
		if len(live) == 0 {
			t.Errorf("instance %d: nothing cached; the workload does not exercise the index", i)
		}
	}
}

func TestKVEventDelayValidated(t *testing.T) {
	for _, d := range []float64{-0.001, math.NaN(), math.Inf(1)} {
		cfg := testConfig(t, 1, "round-robin", "vllm", 64)
		cfg.KVEventDelay = d
		if _, err := newSimulation(cfg); err == nil || !strings.Contains(err.Error(), "KV-event delay") {
			t.Errorf("KVEventDelay %v: error %v, want one naming the KV-event delay", d, err)
		}
	}
}

// TestDefaultClusterSpecRoutesLikeTheRealRouter: the simulator's defaults are the real
// router's, from the one place both take them.
func TestDefaultClusterSpecRoutesLikeTheRealRouter(t *testing.T) {
	spec := DefaultClusterSpec()
	if spec.ScrapeInterval != serving.DefaultScrapeInterval.Seconds() || spec.KVEventDelay != serving.DefaultKVEventDelay.Seconds() {
		t.Errorf("DefaultClusterSpec scrape %v s, KV-event delay %v s; want serving's %v and %v",
			spec.ScrapeInterval, spec.KVEventDelay, serving.DefaultScrapeInterval, serving.DefaultKVEventDelay)
	}
	cfg, err := spec.Build(metrics.SLO{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ScrapeInterval != spec.ScrapeInterval || cfg.KVEventDelay != spec.KVEventDelay {
		t.Errorf("Build: scrape %v, KV-event delay %v; want the spec's %v and %v", cfg.ScrapeInterval, cfg.KVEventDelay, spec.ScrapeInterval, spec.KVEventDelay)
	}
}

// TestKVEventIndexOnlyForCacheReaders: the index is kept only for a router that reads the
// caches; any other routes the same with or without it, and pays nothing for it.
func TestKVEventIndexOnlyForCacheReaders(t *testing.T) {
	for router, want := range map[string]bool{
		"round-robin": false, "prefix-affinity": false, "weighted": false,
		"weighted:precise-prefix=1": true,
	} {
		cfg := testConfig(t, 2, router, "vllm", 64)
		cfg.KVEventDelay = 0.002
		s, err := newSimulation(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.instances[0].kv != nil; got != want {
			t.Errorf("%s: KV-event index kept %v, want %v", router, got, want)
		}
	}
}

// TestScrapedGaugesAreAsOfTheLastStep: a real engine publishes its gauges after each step
// (and on going idle), so a scrape during an instance's first step still reads it idle,
// however long the step; the simulator's scrapes read the same. Request 0 (64 tokens) runs
// on one instance from 0.001; request 1 (1,000 tokens), routed on the scrape at 0.02, goes
// to the other, whose prefill runs from 0.021 to 0.131 s. Request 2, routed on the scrape
// at 0.06, still reads that instance idle and goes there (live gauges showed request 1's 63
// blocks against request 0's 5 and sent it to request 0's instance).
func TestScrapedGaugesAreAsOfTheLastStep(t *testing.T) {
	cfg := testConfig(t, 2, "weighted:kv=1,queue=0,prefix=0", "vllm", 4096)
	cfg.Latency = affineModel{perStep: 0.01, perToken: 1e-4}
	cfg.ScrapeInterval = 0.02
	rows := []traces.Row{
		{Arrival: 0.001, InputTokens: 64, OutputTokens: 500},
		{Arrival: 0.021, InputTokens: 1000, OutputTokens: 200},
		{Arrival: 0.065, InputTokens: 64, OutputTokens: 10},
	}
	_, recs := runCollect(t, cfg, rows, false)
	got := make([]int, len(rows))
	for _, r := range recs {
		got[r.ID] = r.Instance
	}
	if got[1] == got[0] || got[2] != got[1] {
		t.Errorf("requests went to instances %v; want request 1 apart from request 0, and request 2 beside request 1 (whose instance's gauges are as of before its first step)", got)
	}
}
