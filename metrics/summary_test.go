package metrics

import (
	"math"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/serving"
)

func TestPercentileMatchesNumpy(t *testing.T) {
	// Values from numpy.percentile([1, 2, 3, 4, 10], p) with the default linear method.
	x := []float64{1, 2, 3, 4, 10}
	for _, tc := range []struct{ p, want float64 }{
		{0, 1}, {50, 3}, {90, 7.6}, {99, 9.76}, {100, 10}, {25, 2},
	} {
		if got := Percentile(x, tc.p); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("Percentile(%v, %g) = %g, want %g", x, tc.p, got, tc.want)
		}
	}
}

func TestHistogramPercentiles(t *testing.T) {
	var h histogram
	var exact []float64
	for i := range 20000 {
		v := 0.001 * (1 + float64((i*7919)%1000)/37)
		h.add(v, 1)
		exact = append(exact, v)
	}
	slices.Sort(exact)
	for _, p := range []float64{0, 1, 50, 90, 99, 99.9, 100} {
		got, want := h.percentile(p), Percentile(exact, p)
		if math.Abs(got-want) > want*1e-4 {
			t.Errorf("p%g = %g, exact %g", p, got, want)
		}
	}
	var one histogram
	one.add(0.0123, 500)
	one.add(0.0456, 500)
	if got := one.percentile(25); got != 0.0123 {
		t.Errorf("a bucket of one value reads %g, want it exactly", got)
	}
}

func TestParseSLO(t *testing.T) {
	for _, tc := range []struct {
		in      []string
		want    SLO
		wantErr bool
	}{
		{in: []string{"ttft:500", "tpot:50"}, want: SLO{TTFTMs: 500, TPOTMs: 50}},
		{in: []string{"ttft:500,e2el:2000"}, want: SLO{TTFTMs: 500, E2ELMs: 2000}},
		{in: nil, want: SLO{}},
		{in: []string{"itl:5"}, wantErr: true},
		{in: []string{"ttft"}, wantErr: true},
		{in: []string{"ttft:-1"}, wantErr: true},
		{in: []string{"ttft:abc"}, wantErr: true},
	} {
		got, err := ParseSLO(tc.in...)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseSLO(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseSLO(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestSummary(t *testing.T) {
	c := NewCollector(SLO{TTFTMs: 150})
	records := []serving.Record{
		{Arrival: 0, FirstToken: 0.1, Finish: 1.1, PromptTokens: 10, OutputTokens: 11},
		{Arrival: 1, FirstToken: 1.2, Finish: 2.0, PromptTokens: 20, OutputTokens: 5},
		{Arrival: 2, FirstToken: 2.3, Finish: 2.3, PromptTokens: 30, OutputTokens: 1},
		{Arrival: 3, Failed: true, Error: "boom"},
	}
	for i := range records {
		c.Add(&records[i])
	}
	for range 10 {
		c.AddITL(0.1)
	}
	for range 4 {
		c.AddITL(0.2)
	}
	got := c.Summary(4, EngineCounters{PrefixCacheQueries: 60, PrefixCacheHits: 15, Preemptions: 2})
	want := Summary{
		Completed: 3, Failed: 1, TotalInputTokens: 60, TotalOutputTokens: 17, Duration: 4,
		RequestThroughput: 0.75, RequestGoodput: 0.25, OutputThroughput: 4.25, TotalTokenThroughput: 19.25,
		MeanTTFTMs: 200, MedianTTFTMs: 200, StdTTFTMs: math.Sqrt(2.0/300) * 1000, P90TTFTMs: 280, P99TTFTMs: 298,
		MeanTPOTMs: 150, MedianTPOTMs: 150, StdTPOTMs: 50, P90TPOTMs: 190, P99TPOTMs: 199,
		MeanITLMs: (1.0 + 0.8) / 14 * 1000, MedianITLMs: 100, P90ITLMs: 200, P99ITLMs: 200,
		MeanE2ELMs: 1000 * (1.1 + 1.0 + 0.3) / 3, MedianE2ELMs: 1000, P90E2ELMs: 1080, P99E2ELMs: 1098,
		PrefixCacheHitRate: 0.25, Preemptions: 2,
	}
	// The ITL standard deviation of ten 0.1s and four 0.2s.
	mean := 1.8 / 14
	want.StdITLMs = 1000 * math.Sqrt((10*(0.1-mean)*(0.1-mean)+4*(0.2-mean)*(0.2-mean))/14)
	e2e := []float64{1.1, 1.0, 0.3}
	want.StdE2ELMs = 1000 * popStd(e2e)
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("Summary (-want +got):\n%s", diff)
	}
}

func popStd(x []float64) float64 {
	var m float64
	for _, v := range x {
		m += v
	}
	m /= float64(len(x))
	var s float64
	for _, v := range x {
		s += (v - m) * (v - m)
	}
	return math.Sqrt(s / float64(len(x)))
}

func TestSummaryEmpty(t *testing.T) {
	got := NewCollector(SLO{}).Summary(0, EngineCounters{})
	if diff := cmp.Diff(Summary{}, got); diff != "" {
		t.Errorf("empty summary (-want +got):\n%s", diff)
	}
}

func TestSummaryByClass(t *testing.T) {
	c := NewCollector(SLO{TTFTMs: 100})
	for _, r := range []serving.Record{
		{Arrival: 0, FirstToken: 0.05, Finish: 0.2, OutputTokens: 4, Objective: "critical"},
		{Arrival: 0, FirstToken: 0.5, Finish: 0.6, OutputTokens: 4, Objective: "sheddable"},
		{Arrival: 0, Failed: true, Error: "429: system saturated, sheddable request dropped", Objective: "sheddable"},
		{Arrival: 0, FirstToken: 0.01, Finish: 0.1, OutputTokens: 4},
	} {
		c.Add(&r)
	}
	s := c.Summary(2, EngineCounters{})
	if s.Completed != 3 || s.Failed != 1 || len(s.Classes) != 2 {
		t.Fatalf("summary: %d completed, %d failed, classes %v", s.Completed, s.Failed, s.Classes)
	}
	crit, shed := s.Classes["critical"], s.Classes["sheddable"]
	if crit.Completed != 1 || crit.Failed != 0 || crit.RequestGoodput != 0.5 || crit.MeanTTFTMs != 50 {
		t.Errorf("critical: %+v", crit)
	}
	if shed.Completed != 1 || shed.Failed != 1 || shed.RequestGoodput != 0 || shed.MeanTTFTMs != 500 {
		t.Errorf("sheddable: %+v", shed)
	}
}
