package latency

import (
	"compress/gzip"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/serving"
)

// engineSteps draws step shapes as a busy engine logs them: mostly decode steps, some
// mixed (chunked prefill with running decodes), a few prefill-only steps with big chunks.
// Each step takes truth's time plus interference, as on a machine shared with other
// processes: multiplicative jitter, and interruptions that arrive at rate interrupts per
// second of step time and last an exponential time of mean pause.
func engineSteps(truth LinearCoefficients, n int, maxContext int, jitter, interrupts, pause float64, seed uint64) []Sample {
	rng := rand.New(rand.NewPCG(seed, 7))
	samples := make([]Sample, 0, n)
	for range n {
		var s serving.StepShape
		kind := rng.Float64()
		if kind >= 0.03 { // decoding sequences: all but prefill-only steps
			s.DecodeSeqs = 1 + rng.IntN(24)
			for range s.DecodeSeqs {
				s.DecodeContextTokens += 1 + rng.IntN(maxContext)
			}
			s.ContextTokens = s.DecodeContextTokens
		}
		if kind < 0.03 || kind >= 0.90 { // prefill chunks: prefill-only and mixed steps
			s.PrefillSeqs = 1 + rng.IntN(3)
			for range s.PrefillSeqs {
				chunk := 16 + rng.IntN(maxContext/2)
				ctx := rng.IntN(maxContext / 2)
				s.PrefillTokens += chunk
				s.ContextTokens += ctx + chunk
				s.PrefillAttention += float64(chunk) * (float64(ctx) + float64(chunk)/2)
			}
		}
		t := truth.predict(s) * math.Exp(jitter*rng.NormFloat64())
		for arrivals := rng.ExpFloat64() / interrupts; arrivals < t; arrivals += rng.ExpFloat64() / interrupts {
			t += pause * rng.ExpFloat64()
		}
		samples = append(samples, Sample{Shape: s, Seconds: t})
	}
	return samples
}

// checkFitTargets reports where a fit misses issue 11's targets on its own samples: the
// total within 5%, every class of at least 20 steps within 10%.
func checkFitTargets(t *testing.T, r FitReport) {
	t.Helper()
	if e := r.RelativeError(); math.Abs(e) > 0.05 {
		t.Errorf("total: predicted %.4f s, measured %.4f s (%+.1f%%), want within 5%%", r.PredictedSeconds, r.MeasuredSeconds, 100*e)
	}
	for _, c := range r.Classes {
		if e := c.RelativeError(); c.Steps >= 20 && math.Abs(e) > 0.10 {
			t.Errorf("%s (%d steps): predicted %.4f s, measured %.4f s (%+.1f%%), want within 10%%",
				c.Class, c.Steps, c.PredictedSeconds, c.MeasuredSeconds, 100*e)
		}
	}
	if t.Failed() {
		t.Logf("fit: %s", r.String())
	}
}

func TestFitReproducesTotals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		truth LinearCoefficients
		// maxContext bounds a sequence's context; jitter, interrupts and pause are
		// engineSteps' interference.
		maxContext                int
		jitter, interrupts, pause float64
	}{
		{
			// The tiny CPU model (servelab model synth --preset tiny) as fitted to its own
			// steps: 0.1 ms decodes under 50 µs of loop overhead, 10-100 ms prefills; two
			// engines, a router and a load generator share two cores.
			name:       "tiny CPU model, shared cores",
			truth:      LinearCoefficients{Intercept: 5e-5, PrefillToken: 1.5e-5, PrefillSeq: 1e-4, DecodeSeq: 2e-5, ContextToken: 4e-7, PrefillAttention: 3e-7},
			maxContext: 512, jitter: 0.2, interrupts: 100, pause: 2e-3,
		},
		{
			name:       "tiny CPU model, idle machine",
			truth:      LinearCoefficients{Intercept: 5e-5, PrefillToken: 1.5e-5, PrefillSeq: 1e-4, DecodeSeq: 2e-5, ContextToken: 4e-7, PrefillAttention: 3e-7},
			maxContext: 512, jitter: 0.05, interrupts: 5, pause: 5e-4,
		},
		{
			// Llama-3.1-8B on an H100, about as the roofline models it: 7 ms decode
			// steps, prefills of a few hundred ms; little interference.
			name:       "8B on a GPU",
			truth:      LinearCoefficients{Intercept: 2e-3, PrefillToken: 2.2e-5, PrefillSeq: 3e-4, DecodeSeq: 3e-5, ContextToken: 5e-8, PrefillAttention: 8e-10},
			maxContext: 8192, jitter: 0.02, interrupts: 1, pause: 1e-3,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			samples := engineSteps(tc.truth, 3000, tc.maxContext, tc.jitter, tc.interrupts, tc.pause, 11)
			got, r2, err := FitLinear(samples)
			if err != nil {
				t.Fatal(err)
			}
			r := Fit(got, samples)
			if r.R2 != r2 {
				t.Errorf("Fit's R² %v, FitLinear's %v", r.R2, r2)
			}
			checkFitTargets(t, r)
		})
	}
}

// TestFitReproducesRealSteps fits the steps two tiny-model engines logged while serving a
// trace slice on two shared cores (servelab fidelity's calibration; see testdata/README.md).
func TestFitReproducesRealSteps(t *testing.T) {
	files, err := filepath.Glob("testdata/steps-tiny-*.jsonl.gz")
	if err != nil || len(files) == 0 {
		t.Fatalf("no step logs in testdata: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			samples := loadGzipSamples(t, file)
			got, _, err := FitLinear(samples)
			if err != nil {
				t.Fatal(err)
			}
			checkFitTargets(t, Fit(got, samples))
		})
	}
}

// loadGzipSamples reads a gzip-compressed step log.
func loadGzipSamples(t *testing.T, file string) []Sample {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	samples, err := ReadSamples(z, file)
	if err != nil {
		t.Fatal(err)
	}
	return samples
}

func TestClasses(t *testing.T) {
	decode := func(seqs, ctx int) serving.StepShape {
		return serving.StepShape{DecodeSeqs: seqs, ContextTokens: ctx, DecodeContextTokens: ctx}
	}
	samples := []Sample{
		{decode(1, 100), 1}, // 100 per sequence
		{decode(4, 200), 2}, // 50
		{decode(2, 600), 4}, // 300: over the median of 100
		{decode(1, 100), 8}, // 100
		{serving.StepShape{PrefillTokens: 10, PrefillSeqs: 1, ContextTokens: 10}, 16},
		{serving.StepShape{PrefillTokens: 10, PrefillSeqs: 1, DecodeSeqs: 1, ContextTokens: 60}, 32}, // 30
	}
	c := LinearCoefficients{Intercept: 1}
	got := Fit(c, samples)
	want := FitReport{
		Steps: 6, MeasuredSeconds: 63, PredictedSeconds: 6,
		Classes: []StepClass{
			{Class: "prefill/short", MinContext: 10, MaxContext: 10, Steps: 1, MeasuredSeconds: 16, PredictedSeconds: 1},
			{Class: "decode/short", MinContext: 50, MaxContext: 100, Steps: 3, MeasuredSeconds: 11, PredictedSeconds: 3},
			{Class: "decode/long", MinContext: 300, MaxContext: 300, Steps: 1, MeasuredSeconds: 4, PredictedSeconds: 1},
			{Class: "mixed/short", MinContext: 30, MaxContext: 30, Steps: 1, MeasuredSeconds: 32, PredictedSeconds: 1},
		},
	}
	want.R2, want.MeanRelativeError = Evaluate(c, samples)
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(1e-12, 0)); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if err := got.Validate(); err != nil {
		t.Error(err)
	}
	if s := got.String(); !strings.Contains(s, "decode/short 3 steps -72.7%") || !strings.Contains(s, "total 63.000 s measured, 6.000 s predicted (-90.5%)") {
		t.Errorf("String() = %q", s)
	}
}

func TestFitReportValidate(t *testing.T) {
	good := FitReport{Steps: 3, R2: 0.9, MeasuredSeconds: 1, PredictedSeconds: 1,
		Classes: []StepClass{{Class: "decode/short", Steps: 3, MeasuredSeconds: 1, PredictedSeconds: 1}}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mutate func(*FitReport)
		want   string
	}{
		"negative steps": {func(r *FitReport) { r.Steps = -1 }, `"steps"`},
		"R² over 1":      {func(r *FitReport) { r.R2 = 1.5 }, `"r2"`},
		"NaN total":      {func(r *FitReport) { r.MeasuredSeconds = math.NaN() }, `"measured_s"`},
		"unknown class":  {func(r *FitReport) { r.Classes[0].Class = "prefill/medium" }, `class "prefill/medium"`},
		"too many steps": {func(r *FitReport) { r.Classes[0].Steps = 4 }, "more than the report's 3"},
		"context range":  {func(r *FitReport) { r.Classes[0].MinContext = 5 }, "context range [5, 0]"},
	} {
		r := good
		r.Classes = append([]StepClass(nil), good.Classes...)
		tc.mutate(&r)
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %s", name, err, tc.want)
		}
	}
}

func TestReadSamples(t *testing.T) {
	good := `{"shape":{"prefill_tokens":0,"prefill_seqs":0,"decode_seqs":1,"context_tokens":50,"decode_context_tokens":50,"prefill_attention":0},"seconds":0.0001}` + "\n"
	// As the engine writes it today: the fields for fidelity --explain are skipped.
	engine := `{"shape":{"prefill_tokens":0,"prefill_seqs":0,"decode_seqs":1,"context_tokens":50,"decode_context_tokens":50,"prefill_attention":0},"seconds":0.0001,"end_unix_ns":1796398646484804628,"running":1,"waiting":0,"kv_blocks_used":4}` + "\n"
	got, err := ReadSamples(strings.NewReader(good+engine), "log")
	if err != nil || len(got) != 2 || got[1].Shape.DecodeSeqs != 1 {
		t.Fatalf("%v, %v", got, err)
	}
	for name, tc := range map[string]struct{ text, want string }{
		"bad JSON":       {good + "{", "log: step 2"},
		"empty step":     {good + `{"shape":{},"seconds":1}`, "log: step 2: shape"},
		"no duration":    {`{"shape":{"decode_seqs":1}}`, "log: step 1: duration"},
		"wrong type":     {`{"shape":{"decode_seqs":"1"},"seconds":1}`, "log: step 1"},
		"negative shape": {`{"shape":{"decode_seqs":-1},"seconds":1}`, "log: step 1: shape"},
	} {
		if _, err := ReadSamples(strings.NewReader(tc.text), "log"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error starting %q", name, err, tc.want)
		}
	}
	if _, err := LoadSamples(filepath.Join(t.TempDir(), "missing.jsonl")); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}
