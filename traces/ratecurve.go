package traces

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// RateCurve shapes a synthetic trace's arrival rate over time: the rate at t is the
// configured rate times the curve's multiplier m(t), whose mean is 1 (a sine) or whatever
// the steps give. Arrivals are drawn as a homogeneous process at the configured rate in
// "operational time" u and placed at t = Λ⁻¹(u), Λ(t) = ∫₀ᵗ m: the time-rescaling of a
// renewal process, so Poisson arrivals become a nonhomogeneous Poisson process with rate
// rate·m(t), and gamma ones keep their burstiness relative to the local rate.
//
// Forms (SynthConfig.RateCurve, servelab trace synth --rate-curve):
//
//	sine:period=P[,amplitude=A][,phase=F]   m(t) = 1 - A·cos(2π(t/P + F)): a day-shaped
//	                                         curve, trough at t=0 (night) and peak at P/2
//	                                         (default A 0.8, F 0); A in [0, 1)
//	steps:T0=M0,T1=M1,...                    m(t) = Mi from Ti seconds on (T0 must be 0;
//	                                         multipliers positive)
type RateCurve struct {
	kind string
	// sine
	period, amplitude, phase float64
	// steps: starts ascending, mult, and cum[i] = Λ(starts[i])
	starts, mult, cum []float64
}

// ParseRateCurve reads a curve's text form; errors name the offending part.
func ParseRateCurve(text string) (*RateCurve, error) {
	kind, rest, _ := strings.Cut(strings.TrimSpace(text), ":")
	bad := func(format string, a ...any) error {
		return fmt.Errorf("rate curve %q: %s", text, fmt.Sprintf(format, a...))
	}
	kv := map[string]float64{}
	var keys []string
	if strings.TrimSpace(rest) != "" {
		for _, part := range strings.Split(rest, ",") {
			k, v, ok := strings.Cut(part, "=")
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if !ok || k == "" {
				return nil, bad("%q is not key=value", part)
			}
			f, err := strconv.ParseFloat(strings.TrimSuffix(v, "s"), 64)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, bad("%s: %q is not a number", k, v)
			}
			if _, dup := kv[k]; dup {
				return nil, bad("%s given twice", k)
			}
			kv[k] = f
			keys = append(keys, k)
		}
	}
	switch kind {
	case "sine":
		c := &RateCurve{kind: kind, amplitude: 0.8}
		for _, k := range keys {
			switch k {
			case "period":
				c.period = kv[k]
			case "amplitude":
				c.amplitude = kv[k]
			case "phase":
				c.phase = kv[k]
			default:
				return nil, bad("unknown key %q (want period, amplitude, phase)", k)
			}
		}
		switch {
		case !(c.period > 0):
			return nil, bad("period: want a positive number of seconds, got %v", c.period)
		case !(c.amplitude >= 0 && c.amplitude < 1):
			return nil, bad("amplitude: want a value in [0, 1) so the rate stays positive, got %v", c.amplitude)
		}
		return c, nil
	case "steps":
		c := &RateCurve{kind: kind}
		if len(keys) == 0 {
			return nil, bad("no steps: want steps:0=M0,T1=M1,...")
		}
		for _, k := range keys {
			t, err := strconv.ParseFloat(strings.TrimSuffix(k, "s"), 64)
			if err != nil || !(t >= 0) || math.IsInf(t, 0) {
				return nil, bad("step start %q is not a number of seconds", k)
			}
			if !(kv[k] > 0) {
				return nil, bad("step at %s s: multiplier must be positive, got %v", k, kv[k])
			}
			c.starts, c.mult = append(c.starts, t), append(c.mult, kv[k])
		}
		idx := make([]int, len(c.starts))
		for i := range idx {
			idx[i] = i
		}
		sort.Slice(idx, func(a, b int) bool { return c.starts[idx[a]] < c.starts[idx[b]] })
		s, m := make([]float64, len(idx)), make([]float64, len(idx))
		for i, j := range idx {
			s[i], m[i] = c.starts[j], c.mult[j]
			if i > 0 && s[i] == s[i-1] {
				return nil, bad("two steps start at %v s", s[i])
			}
		}
		if s[0] != 0 {
			return nil, bad("the first step must start at 0 s, got %v", s[0])
		}
		c.starts, c.mult = s, m
		c.cum = make([]float64, len(s))
		for i := 1; i < len(s); i++ {
			c.cum[i] = c.cum[i-1] + m[i-1]*(s[i]-s[i-1])
		}
		return c, nil
	}
	return nil, bad("unknown curve %q (want sine:period=P[,amplitude=A][,phase=F] or steps:0=M0,T1=M1,...)", kind)
}

// Multiplier returns m(t).
func (c *RateCurve) Multiplier(t float64) float64 {
	if c.kind == "sine" {
		return 1 - c.amplitude*math.Cos(2*math.Pi*(t/c.period+c.phase))
	}
	i := sort.SearchFloat64s(c.starts, t)
	if i == len(c.starts) || c.starts[i] > t {
		i--
	}
	return c.mult[max(i, 0)]
}

// integral returns Λ(t) = ∫₀ᵗ m.
func (c *RateCurve) integral(t float64) float64 {
	if c.kind == "sine" {
		w := 2 * math.Pi / c.period
		return t - c.amplitude/w*(math.Sin(w*t+2*math.Pi*c.phase)-math.Sin(2*math.Pi*c.phase))
	}
	i := sort.SearchFloat64s(c.starts, t)
	if i == len(c.starts) || c.starts[i] > t {
		i--
	}
	i = max(i, 0)
	return c.cum[i] + c.mult[i]*(t-c.starts[i])
}

// Time returns Λ⁻¹(u): the time by which the curve has accumulated u seconds of unit rate.
func (c *RateCurve) Time(u float64) float64 {
	if u <= 0 {
		return 0
	}
	if c.kind == "steps" {
		i := sort.SearchFloat64s(c.cum, u)
		if i == len(c.cum) || c.cum[i] > u {
			i--
		}
		return c.starts[i] + (u-c.cum[i])/c.mult[i]
	}
	// Λ is increasing with Λ(t) within amplitude/w of t: bisect on that bracket.
	spread := c.amplitude * c.period / (2 * math.Pi) * 2
	lo, hi := max(0, u-spread), u+spread
	// Bisect to the last bit, so that times stay in the order of u's.
	for range 200 {
		mid := (lo + hi) / 2
		if mid <= lo || mid >= hi {
			break
		}
		if c.integral(mid) < u {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}
