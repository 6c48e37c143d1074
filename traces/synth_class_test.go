package traces

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestSynthClasses(t *testing.T) {
	base := SynthConfig{Requests: 4000, Rate: 10, InputMean: 100, OutputMean: 10, TurnsMean: 2, Seed: 3}
	plain := synthAll(t, base)
	withClasses := base
	withClasses.Classes = []SynthClass{{Name: "critical", Share: 0.7}, {Name: "sheddable", Share: 0.3, Tenants: 3}}
	classed := synthAll(t, withClasses)
	// Classes draw from their own stream: the rows are otherwise the same.
	if d := cmp.Diff(plain, classed, cmpopts.IgnoreFields(Row{}, "Objective", "FairnessID")); d != "" {
		t.Fatalf("classes changed the rows (-without +with):\n%s", d)
	}
	count := map[string]int{}
	session := map[uint64]string{}
	for _, r := range classed {
		count[r.Objective]++
		if r.Objective == "critical" && r.FairnessID != "critical" {
			t.Fatalf("row %d: critical row with fairness id %q", r.Line, r.FairnessID)
		}
		if r.Objective == "sheddable" && r.FairnessID != "sheddable-0" && r.FairnessID != "sheddable-1" && r.FairnessID != "sheddable-2" {
			t.Fatalf("row %d: sheddable row with fairness id %q", r.Line, r.FairnessID)
		}
		if prev, ok := session[r.Session]; ok && prev != r.FairnessID {
			t.Fatalf("row %d: a follow-up turn changed flow %q -> %q", r.Line, prev, r.FairnessID)
		}
		session[r.Session] = r.FairnessID
	}
	if got := float64(count["sheddable"]) / float64(len(classed)); math.Abs(got-0.3) > 0.04 {
		t.Errorf("sheddable share %.3f, want about 0.3", got)
	}
}

func TestParseSynthClass(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want SynthClass
		bad  bool
	}{
		{in: "critical:0.7", want: SynthClass{Name: "critical", Share: 0.7}},
		{in: "batch:0.3:tenants=4", want: SynthClass{Name: "batch", Share: 0.3, Tenants: 4}},
		{in: "critical", bad: true},
		{in: "critical:1.5", bad: true},
		{in: "critical:x", bad: true},
		{in: ":0.5", bad: true},
		{in: "a:0.5:users=3", bad: true},
		{in: "a:0.5:tenants=0", bad: true},
	} {
		got, err := ParseSynthClass(tc.in)
		if tc.bad != (err != nil) {
			t.Errorf("ParseSynthClass(%q) error %v, want error %v", tc.in, err, tc.bad)
			continue
		}
		if d := cmp.Diff(tc.want, got); d != "" && !tc.bad {
			t.Errorf("ParseSynthClass(%q) (-want +got):\n%s", tc.in, d)
		}
	}
}

func synthAll(t *testing.T, cfg SynthConfig) []Row {
	t.Helper()
	g, err := NewSynth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return readAll(t, g)
}
