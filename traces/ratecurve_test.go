package traces

import (
	"math"
	"strings"
	"testing"
)

// Arrivals follow the curve: with a day-shaped sine the count in each tenth of the period
// matches rate x the integral of the multiplier over it, and with steps each step's.
func TestSynthRateCurve(t *testing.T) {
	tests := []struct {
		name, curve string
		span        float64
	}{
		{"sine", "sine:period=1000,amplitude=0.8", 1000},
		{"sine with phase", "sine:period=500,amplitude=0.5,phase=0.25", 1000},
		{"steps", "steps:0=0.5,300=2,700=1", 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const rate = 50.0
			c, err := ParseRateCurve(tt.curve)
			if err != nil {
				t.Fatal(err)
			}
			rows := synthRows(t, SynthConfig{Requests: int(rate * c.integral(tt.span)), Rate: rate, RateCurve: tt.curve, InputMean: 10, OutputMean: 10, Seed: 5})
			if rows[0].Arrival != 0 {
				t.Errorf("first arrival at %g s, want 0", rows[0].Arrival)
			}
			const bins = 10
			w := tt.span / bins
			var got [bins]int
			for i, r := range rows {
				if i > 0 && r.Arrival < rows[i-1].Arrival {
					t.Fatalf("row %d arrives at %g s, before row %d at %g s", i, r.Arrival, i-1, rows[i-1].Arrival)
				}
				if b := int(r.Arrival / w); b < bins {
					got[b]++
				}
			}
			for b := range bins {
				want := rate * (c.integral(float64(b+1)*w) - c.integral(float64(b)*w))
				// Poisson: within 4 standard deviations, and 2 for rounding at the end.
				if d := math.Abs(float64(got[b]) - want); d > 4*math.Sqrt(want)+2 {
					t.Errorf("bin %d [%g, %g) s: %d arrivals, want %.0f ± %.0f", b, float64(b)*w, float64(b+1)*w, got[b], want, 4*math.Sqrt(want))
				}
			}
		})
	}
}

func TestRateCurveTimeInvertsTheIntegral(t *testing.T) {
	for _, text := range []string{"sine:period=600", "sine:period=86400,amplitude=0.95,phase=0.3", "steps:0=1,10=0.1,20=5"} {
		c, err := ParseRateCurve(text)
		if err != nil {
			t.Fatal(err)
		}
		for _, tm := range []float64{0, 0.5, 9.99, 10, 150, 599, 1234.5, 90000} {
			if got := c.Time(c.integral(tm)); math.Abs(got-tm) > 1e-6*max(1, tm) {
				t.Errorf("%s: Time(Λ(%g)) = %g", text, tm, got)
			}
		}
	}
}

func TestRateCurveRejectsBadText(t *testing.T) {
	for _, tt := range []struct{ text, want string }{
		{"cosine:period=3", `unknown curve "cosine"`},
		{"sine", "period: want a positive"},
		{"sine:period=10,amplitude=1", "amplitude: want a value in [0, 1)"},
		{"sine:period=x", `period: "x" is not a number`},
		{"sine:period=10,width=3", `unknown key "width"`},
		{"steps", "no steps"},
		{"steps:5=1", "first step must start at 0 s"},
		{"steps:0=1,10=0", "step at 10 s: multiplier must be positive"},
		{"steps:0=1,ten=2", `step start "ten"`},
		{"steps:0=1,10", `"10" is not key=value`},
	} {
		_, err := ParseRateCurve(tt.text)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one containing %q", tt.text, err, tt.want)
		}
	}
	if _, err := NewSynth(SynthConfig{Requests: 1, Rate: 1, InputMean: 1, OutputMean: 1, RateCurve: "sine"}); err == nil || !strings.Contains(err.Error(), "synth: rate_curve: rate curve") {
		t.Errorf("NewSynth with a bad curve: %v", err)
	}
}
