package model

import "math"

// initialRopePositions bounds the rotary table built at load time; longer contexts extend
// it when a step first needs them.
const initialRopePositions = 8192

// invFreq returns RoPE's inverse frequencies theta^(-2i/head_dim), i < head_dim/2, with the
// config's rope scaling applied. Linear scaling divides positions by the factor, which is
// dividing every frequency by it.
func invFreq(c Config) []float64 {
	half := c.HeadDim / 2
	f := make([]float64, half)
	for i := range f {
		f[i] = math.Pow(c.RopeTheta, -float64(2*i)/float64(c.HeadDim))
	}
	s := c.RopeScaling
	switch s.Type {
	case "linear":
		for i := range f {
			f[i] /= s.Factor
		}
	case "llama3":
		// Llama 3.1: keep high frequencies, divide low ones by the factor, and blend in
		// between, by wavelength relative to the original context.
		lowWavelen := float64(s.OriginalMaxPos) / s.LowFreqFactor
		highWavelen := float64(s.OriginalMaxPos) / s.HighFreqFactor
		for i, v := range f {
			wavelen := 2 * math.Pi / v
			switch {
			case wavelen < highWavelen:
			case wavelen > lowWavelen:
				f[i] = v / s.Factor
			default:
				smooth := (float64(s.OriginalMaxPos)/wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
				f[i] = (1-smooth)*v/s.Factor + smooth*v
			}
		}
	}
	return f
}

// ropeTable holds cos and sin of position*invFreq[i] for positions [0, n), row-major
// [n, half]. A table is immutable once published.
type ropeTable struct {
	n, half  int
	cos, sin []float32
}

func newRopeTable(invFreq []float64, n int) *ropeTable {
	half := len(invFreq)
	t := &ropeTable{n: n, half: half, cos: make([]float32, n*half), sin: make([]float32, n*half)}
	for p := range n {
		for i, f := range invFreq {
			s, c := math.Sincos(float64(p) * f)
			t.cos[p*half+i], t.sin[p*half+i] = float32(c), float32(s)
		}
	}
	return t
}

// row returns the cos and sin rows of position p (p < n).
func (t *ropeTable) row(p int) (cos, sin []float32) {
	return t.cos[p*t.half : (p+1)*t.half], t.sin[p*t.half : (p+1)*t.half]
}

// ropeFor returns a rotary table covering positions [0, n), growing the model's table
// (to at least double its size) when it is shorter.
func (m *Model) ropeFor(n int) *ropeTable {
	if t := m.rope.Load(); t != nil && t.n >= n {
		return t
	}
	m.ropeMu.Lock()
	defer m.ropeMu.Unlock()
	t := m.rope.Load()
	if t != nil && t.n >= n {
		return t
	}
	size := n
	if t != nil {
		size = max(n, 2*t.n)
	}
	t = newRopeTable(m.invFreq, size)
	m.rope.Store(t)
	return t
}

// RopeTables returns the rotary tables of a model of config c for positions [0, n):
// cos and sin of position·invFreq[i], [n, HeadDim/2] row-major float32, exactly the
// tables the CPU kernels use (a GPU backend uploads them).
func RopeTables(c Config, n int) (cos, sin []float32) {
	t := newRopeTable(invFreq(c), n)
	return t.cos, t.sin
}
