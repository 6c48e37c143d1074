package traces

import (
	"bytes"
	"math"
	"testing"
)

func synthRows(t *testing.T, cfg SynthConfig) []Row {
	t.Helper()
	s, err := NewSynth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return readAll(t, s)
}

func TestSynthIsDeterministic(t *testing.T) {
	cfg := SynthConfig{Requests: 500, Rate: 20, Arrival: "gamma", CV: 3, InputMean: 300, OutputMean: 50, InputSigma: 1, OutputSigma: 1, PrefixGroups: 3, TurnsMean: 3, Seed: 42}
	encode := func(seed uint64) []byte {
		c := cfg
		c.Seed = seed
		var buf bytes.Buffer
		w := NewNativeWriter(&buf)
		for _, r := range synthRows(t, c) {
			if err := w.Write(r); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
		return buf.Bytes()
	}
	if !bytes.Equal(encode(42), encode(42)) {
		t.Error("the same seed gave different traces")
	}
	if bytes.Equal(encode(42), encode(43)) {
		t.Error("different seeds gave the same trace")
	}
}

func TestSynthMatchesItsParameters(t *testing.T) {
	for _, arrival := range []string{"poisson", "gamma"} {
		t.Run(arrival, func(t *testing.T) {
			rows := synthRows(t, SynthConfig{Requests: 40000, Rate: 50, Arrival: arrival, CV: 2, InputMean: 800, OutputMean: 200, InputSigma: 0.7, OutputSigma: 0.5, Seed: 1})
			var in, out float64
			var gaps, gaps2 float64
			for i, r := range rows {
				in += float64(r.InputTokens)
				out += float64(r.OutputTokens)
				if i > 0 {
					g := r.Arrival - rows[i-1].Arrival
					if g < 0 {
						t.Fatalf("row %d arrives before row %d", i, i-1)
					}
					gaps += g
					gaps2 += g * g
				}
			}
			n := float64(len(rows))
			rate := (n - 1) / rows[len(rows)-1].Arrival
			meanGap := gaps / (n - 1)
			cv := math.Sqrt(gaps2/(n-1)-meanGap*meanGap) / meanGap
			wantCV := 1.0
			if arrival == "gamma" {
				wantCV = 2
			}
			for _, c := range []struct {
				name      string
				got, want float64
			}{{"rate", rate, 50}, {"input mean", in / n, 800}, {"output mean", out / n, 200}, {"cv", cv, wantCV}} {
				if math.Abs(c.got-c.want) > 0.05*c.want {
					t.Errorf("%s = %.3f, want %.3f within 5%%", c.name, c.got, c.want)
				}
			}
		})
	}
}

func TestSynthPrefixesAndSessionsShareHashIDs(t *testing.T) {
	rows := synthRows(t, SynthConfig{Requests: 2000, Rate: 10, InputMean: 600, OutputMean: 100, PrefixGroups: 2, PrefixTokens: 256, TurnsMean: 4, ThinkTimeMean: 5, Seed: 7})
	heads := map[int64]int{}
	bySession := map[uint64][]Row{}
	for _, r := range rows {
		if r.InputTokens >= 256 {
			heads[r.HashIDs[0]]++
		}
		if want := (r.InputTokens + 15) / 16; len(r.HashIDs) != want || r.HashBlockSize != 16 {
			t.Fatalf("%d hash ids of block %d for %d tokens", len(r.HashIDs), r.HashBlockSize, r.InputTokens)
		}
		bySession[r.Session] = append(bySession[r.Session], r)
	}
	if len(heads) != 2 {
		t.Errorf("requests start with %d distinct prefixes, want the 2 groups: %v", len(heads), heads)
	}
	followUps := 0
	for _, turns := range bySession {
		for i := 1; i < len(turns); i++ {
			prev, cur := turns[i-1], turns[i]
			keep := prev.InputTokens / 16
			if cur.InputTokens < prev.InputTokens+prev.OutputTokens || !equalIDs(prev.HashIDs[:keep], cur.HashIDs[:keep]) {
				t.Fatalf("session %d turn %d does not extend the previous turn", cur.Session, i)
			}
			followUps++
		}
	}
	if mean := float64(len(rows)) / float64(len(bySession)); followUps == 0 || mean < 2 {
		t.Errorf("%d follow-up turns, %.2f turns per session; want multi-turn sessions", followUps, mean)
	}
}

func equalIDs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSynthRejectsBadConfig(t *testing.T) {
	good := SynthConfig{Requests: 10, Rate: 1, InputMean: 10, OutputMean: 10}
	for name, mutate := range map[string]func(*SynthConfig){
		"no requests":    func(c *SynthConfig) { c.Requests = 0 },
		"zero rate":      func(c *SynthConfig) { c.Rate = 0 },
		"unknown":        func(c *SynthConfig) { c.Arrival = "weibull" },
		"gamma no cv":    func(c *SynthConfig) { c.Arrival, c.CV = "gamma", 0 },
		"tiny input":     func(c *SynthConfig) { c.InputMean = 0.5 },
		"negative sigma": func(c *SynthConfig) { c.OutputSigma = -1 },
		"turns below 1":  func(c *SynthConfig) { c.TurnsMean = 0.5 },
	} {
		c := good
		mutate(&c)
		if _, err := NewSynth(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestInspect(t *testing.T) {
	r, c, err := Open("testdata/mooncake_conv_200.jsonl", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := Inspect(r)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rows != 200 || st.Blocks == 0 || st.RepeatedBlocks == 0 || st.RepeatedShare <= 0 || st.RepeatedShare >= 1 {
		t.Errorf("stats %+v: want 200 rows with some repeated blocks", st)
	}
	var buf bytes.Buffer
	if err := st.WriteText(&buf); err != nil || !bytes.Contains(buf.Bytes(), []byte("repeat an earlier block")) {
		t.Errorf("text output %q, %v", buf.String(), err)
	}
}

func BenchmarkSynth(b *testing.B) {
	s, err := NewSynth(SynthConfig{Requests: math.MaxInt, Rate: 100, InputMean: 1024, OutputMean: 256, InputSigma: 0.6, OutputSigma: 0.6, PrefixGroups: 16, Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for range b.N {
		if _, err := s.Next(); err != nil {
			b.Fatal(err)
		}
	}
}
