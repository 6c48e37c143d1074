package main

import (
	"context"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
	"servelab/traces"
)

// closedLoop returns the records of a closed loop with k slots, each sending its next
// request as the last one finishes, until sendFor seconds; each request lives one of
// lives, drawn at random (seeded).
func closedLoop(k int, lives []float64, sendFor float64) []serving.Record {
	rng := rand.New(rand.NewPCG(1, 2))
	var recs []serving.Record
	for range k {
		// The slots start one request each at time 0, as bench's closed loop does.
		t := 0.0
		for first := true; first || t < sendFor; first = false {
			life := lives[rng.IntN(len(lives))]
			recs = append(recs, serving.Record{ID: uint64(len(recs)), Arrival: t, FirstToken: t + life/4, Finish: t + life})
			t += life
		}
	}
	return recs
}

// The saturated rate of a closed loop is k over the mean request life (Little's law),
// whatever the lives' spread; a burst too short to saturate is refused.
func TestSaturatedRate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		k       int
		lives   []float64
		sendFor float64
		want    float64
		err     string
	}{
		{"equal lives", 8, []float64{0.25}, 3, 32, ""},
		{"mixed lives", 16, []float64{0.05, 0.4, 0.1, 0.9, 0.3, 0.15, 0.6}, 3, 16 / (2.5 / 7), ""},
		{"one long request per slot", 4, []float64{2.5}, 2, 0, "too few to see the cluster saturated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := saturatedRate(closedLoop(tc.k, tc.lives, tc.sendFor), tc.k)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%.2f req/s (want %.2f)", got, tc.want)
			if math.Abs(got-tc.want) > 0.05*tc.want {
				t.Errorf("saturated rate %.2f req/s, want %.2f within 5%%", got, tc.want)
			}
		})
	}
}

// The rate is chosen from the measured capacity, the median of the bursts (one disturbed
// burst does not move it), not from the simulator's; without a measurement
// (--capacity-burst 0) it falls back to the simulator's.
func TestRateFromMeasuredCapacity(t *testing.T) {
	shape := traces.Shape{Rows: 300, Span: 600} // 0.5 req/s
	var bursts []float64
	for _, lives := range [][]float64{{0.2, 0.6}, {0.2, 0.6}, {0.4, 1.2}} { // the last burst ran on a busy machine
		rps, err := saturatedRate(closedLoop(16, lives, 3), 16)
		if err != nil {
			t.Fatal(err)
		}
		bursts = append(bursts, rps)
	}
	m := measuredCapacity{Bursts: bursts, RPS: median(bursts)}
	if math.Abs(m.RPS-40) > 2 {
		t.Fatalf("median of %v = %.2f, want 40 (16 in flight, mean life 0.4s)", bursts, m.RPS)
	}
	for _, tc := range []struct {
		name string
		rep  fidelityReport
		want float64
	}{
		{"measured", fidelityReport{CapacityRPS: 120, Capacity: &m}, 0.7 * m.RPS / 0.5},
		{"simulated", fidelityReport{CapacityRPS: 120}, 0.7 * 120 / 0.5},
	} {
		if got := rateScaleFor(0.7, tc.rep.offeredCapacity(), shape); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: rate scale %.4g, want %.4g", tc.name, got, tc.want)
		}
	}
	if s := m.Spread(); math.Abs(s-0.5) > 0.03 {
		t.Errorf("spread %.3f, want 0.5 (bursts 20..40 over a median of 40)", s)
	}
}

// A burst cycles the slice for its duration; each pass gets hash ids of its own, so the
// cache holds no more sharing than the slice has.
func TestBurstRows(t *testing.T) {
	rows := []traces.Row{
		{Arrival: 0, InputTokens: 32, OutputTokens: 4, HashBlockSize: 16, HashIDs: []int64{0, 1}},
		{Arrival: 5, InputTokens: 40, OutputTokens: 2, HashBlockSize: 16, HashIDs: []int64{0, 2, 3}},
		{Arrival: 9, InputTokens: 7, OutputTokens: 3},
	}
	b := &burstRows{rows: rows, duration: time.Hour}
	var got []traces.Row
	for range 6 {
		row, err := b.Next()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, row)
	}
	want := []traces.Row{
		{InputTokens: 32, OutputTokens: 4, HashBlockSize: 16, HashIDs: []int64{0, 1}},
		{InputTokens: 40, OutputTokens: 2, HashBlockSize: 16, HashIDs: []int64{0, 2, 3}},
		{InputTokens: 7, OutputTokens: 3},
		{InputTokens: 32, OutputTokens: 4, HashBlockSize: 16, HashIDs: []int64{4, 5}},
		{InputTokens: 40, OutputTokens: 2, HashBlockSize: 16, HashIDs: []int64{4, 6, 7}},
		{InputTokens: 7, OutputTokens: 3},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	if rows[0].HashIDs[0] != 0 {
		t.Errorf("the slice's rows were changed: %v", rows[0].HashIDs)
	}
	// It sends for its duration, and at least its minimum.
	b = &burstRows{rows: rows, duration: time.Nanosecond, min: 5}
	for range 5 {
		if _, err := b.Next(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := b.Next(); err == io.EOF {
			break
		} else if err != nil || time.Now().After(deadline) {
			t.Fatalf("burst still sending after its duration (err %v)", err)
		}
	}
}

// The probe measures a real cluster of the tiny model: every burst completes without
// failures and yields a positive rate.
func TestProbeCapacityOnTheTinyModel(t *testing.T) {
	if testing.Short() {
		t.Skip("starts engines")
	}
	dir := synthTiny(t)
	url, _ := startUp(t, "--engines", "2", "--model", dir, "--router", "round-robin", "--threads", "1")
	src, closer, err := traces.Open(mooncakeSlice, "")
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	r, _ := tokenScales{Input: 1.0 / 32, Output: 1.0 / 16, Clip: 512}.apply(traces.Limit(src, 40))
	rows := readRows(t, r)
	m, err := probeCapacity(context.Background(), url, rows, 512, 1, capacityProbe{Concurrency: 4, Duration: 500 * time.Millisecond, Repeats: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Bursts) != 3 || m.RPS <= 0 || m.Requests < 3*8 {
		t.Fatalf("measured %+v", m)
	}
	for _, b := range m.Bursts {
		if b <= 0 {
			t.Errorf("burst rate %.2f", b)
		}
	}
	t.Logf("tiny model, 2 engines: %.1f req/s (bursts %s, %d requests in %.1fs)", m.RPS, formatRates(m.Bursts), m.Requests, m.Seconds)
}
