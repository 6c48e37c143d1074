package traces

import (
	"bytes"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
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
	for _, tc := range []struct {
		name string
		cfg  SynthConfig
		cv   float64
	}{
		{"poisson", SynthConfig{Arrival: "poisson"}, 1},
		{"gamma", SynthConfig{Arrival: "gamma", CV: 2}, 2},
		// With sessions the rate counts follow-up turns; gaps are no longer a renewal
		// process, so their CV is not checked.
		{"sessions", SynthConfig{TurnsMean: 3, ThinkTimeMean: 2}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Requests, cfg.Rate, cfg.Seed = 40000, 50, 1
			cfg.InputMean, cfg.OutputMean, cfg.InputSigma, cfg.OutputSigma = 800, 200, 0.7, 0.5
			rows := synthRows(t, cfg)
			if len(rows) != cfg.Requests || rows[0].Arrival != 0 {
				t.Fatalf("%d rows starting at %g s, want %d from 0 s", len(rows), rows[0].Arrival, cfg.Requests)
			}
			var in, out, firstIn float64
			var gaps, gaps2 float64
			firsts := 0
			seen := map[uint64]bool{}
			for i, r := range rows {
				in += float64(r.InputTokens)
				out += float64(r.OutputTokens)
				if !seen[r.Session] || r.Session == 0 {
					seen[r.Session] = true
					firstIn += float64(r.InputTokens)
					firsts++
				}
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
			meanGap := gaps / (n - 1)
			checks := []struct {
				name      string
				got, want float64
			}{
				{"rate", (n - 1) / rows[len(rows)-1].Arrival, 50},
				{"first-turn input mean", firstIn / float64(firsts), 800},
				{"output mean", out / n, 200},
			}
			if tc.cv > 0 {
				checks = append(checks, struct {
					name      string
					got, want float64
				}{"cv", math.Sqrt(gaps2/(n-1)-meanGap*meanGap) / meanGap, tc.cv})
			}
			if cfg.TurnsMean > 0 {
				checks = append(checks, struct {
					name      string
					got, want float64
				}{"turns per session", n / float64(len(seen)), cfg.TurnsMean})
			}
			for _, c := range checks {
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
	for head, n := range heads {
		if n < len(rows)/4 {
			t.Errorf("prefix %d starts only %d of %d requests", head, n, len(rows))
		}
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

// TestSynthHashIDsAreDistinct checks that prefix groups never reuse each other's ids or
// fresh ones, however many groups there are: every distinct prefix is a distinct chain.
func TestSynthHashIDsAreDistinct(t *testing.T) {
	rows := synthRows(t, SynthConfig{Requests: 3000, Rate: 100, InputMean: 100, OutputMean: 10, PrefixGroups: 1000, PrefixTokens: 64, Seed: 3})
	owner := map[int64][2]int64{} // id -> (first id of its row, position)
	for _, r := range rows {
		for i, id := range r.HashIDs {
			want := [2]int64{-1, int64(i)}
			if i < 4 {
				want[0] = r.HashIDs[0] // a group's blocks: same group head, same position
			}
			if got, ok := owner[id]; ok && (i >= 4 || got != want) {
				t.Fatalf("id %d is reused at position %d of a row starting %d (first seen %v)", id, i, r.HashIDs[0], got)
			}
			owner[id] = want
		}
	}
	st, err := Inspect(&sliceReader{rows: rows})
	if err != nil {
		t.Fatal(err)
	}
	// 3000 requests over 1000 groups of 4 blocks: at most 4000 first uses of a group block.
	if st.RepeatedBlocks < 4*3000-4*1000 || st.RepeatedBlocks > 4*3000 {
		t.Errorf("%d repeated blocks of %d, want the shared prefixes' repeats", st.RepeatedBlocks, st.Blocks)
	}
}

type sliceReader struct{ rows []Row }

func (s *sliceReader) Next() (Row, error) {
	if len(s.rows) == 0 {
		return Row{}, io.EOF
	}
	r := s.rows[0]
	s.rows = s.rows[1:]
	return r, nil
}

func TestSynthEmpiricalLengths(t *testing.T) {
	rows := synthRows(t, SynthConfig{Requests: 500, Rate: 10, InputEmpirical: []int{5, 700}, OutputEmpirical: []int{3}, Seed: 9})
	counts := map[int]int{}
	for _, r := range rows {
		counts[r.InputTokens]++
		if r.OutputTokens != 3 {
			t.Fatalf("output %d drawn from {3}", r.OutputTokens)
		}
	}
	if len(counts) != 2 || counts[5] < 200 || counts[700] < 200 {
		t.Errorf("inputs drawn %v from {5, 700}", counts)
	}
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
		"turns NaN":      func(c *SynthConfig) { c.TurnsMean = math.NaN() },
		"sigma NaN":      func(c *SynthConfig) { c.InputSigma = math.NaN() },
		"infinite mean":  func(c *SynthConfig) { c.InputMean = math.Inf(1) },
		"infinite rate":  func(c *SynthConfig) { c.Rate = math.Inf(1) },
		"min above max":  func(c *SynthConfig) { c.MinTokens, c.MaxTokens = 10, 5 },
		"negative think": func(c *SynthConfig) { c.ThinkTimeMean = -1 },
	} {
		c := good
		mutate(&c)
		if _, err := NewSynth(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestInspect(t *testing.T) {
	// A block repeats only after the same prefix: row 3's 2 and 3 follow 5, not 1.
	rows := []Row{
		{Arrival: 0, InputTokens: 48, OutputTokens: 1, HashIDs: []int64{1, 2, 3}, HashBlockSize: 16, Session: 4},
		{Arrival: 1, InputTokens: 40, OutputTokens: 3, HashIDs: []int64{1, 2, 4}, HashBlockSize: 16},
		{Arrival: 1, InputTokens: 33, OutputTokens: 5, HashIDs: []int64{5, 2, 3}, HashBlockSize: 16, Session: 4},
		{Arrival: 4, InputTokens: 100, OutputTokens: 7, HashIDs: []int64{1, 2, 3}, HashBlockSize: 16, Session: 9},
	}
	st, err := Inspect(&sliceReader{rows: rows})
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{
		Rows: 4, SpanSeconds: 4, Rate: 1,
		Input:  Distribution{Mean: 221.0 / 4, P50: 44, P90: 84.4, P99: 98.44, Max: 100},
		Output: Distribution{Mean: 4, P50: 4, P90: 6.4, P99: 6.94, Max: 7},
		Blocks: 12, RepeatedBlocks: 5, RepeatedShare: 5.0 / 12, HashBlockSize: 16, Sessions: 2,
	}
	if diff := cmp.Diff(want, st, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	var buf bytes.Buffer
	if err := st.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"rows           4\n", "input tokens   mean 55  p50 44  p90 84  p99 98  max 100\n",
		"prefix blocks  12 of 16 tokens, 41.7% repeat an earlier block\n", "sessions       2\n"} {
		if !strings.Contains(buf.String(), line) {
			t.Errorf("text lacks %q:\n%s", line, buf.String())
		}
	}
	if err := st.WriteText(failingWriter{}); err == nil {
		t.Error("a write error is not returned")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

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
