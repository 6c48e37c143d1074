package latency

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"

	"servelab/serving"
)

// stepKinds are the batch classes of steps, in report order: what a step computes. A step
// that computes prefill chunks and decode tokens together (chunked prefill) is mixed.
var stepKinds = [...]string{"prefill", "decode", "mixed"}

// stepKind returns the class of a step's batch: 0 prefill-only, 1 decode-only, 2 mixed;
// -1 for an empty step.
func stepKind(s serving.StepShape) int {
	switch {
	case s.PrefillSeqs > 0 && s.DecodeSeqs > 0:
		return 2
	case s.PrefillSeqs > 0:
		return 0
	case s.DecodeSeqs > 0:
		return 1
	}
	return -1
}

// meanContext is a step's KV tokens read per sequence: the context length of its typical
// sequence, whatever the batch size.
func meanContext(s serving.StepShape) float64 {
	n := s.PrefillSeqs + s.DecodeSeqs
	if n == 0 {
		return 0
	}
	return float64(s.ContextTokens) / float64(n)
}

// StepClass is one class of steps in a FitReport and how well the model predicts their
// total time.
type StepClass struct {
	// Class is "prefill", "decode" or "mixed", then "/short" or "/long" context.
	Class string `json:"class"`
	// MinContext and MaxContext bound the class's context per sequence (KV tokens read per
	// sequence, ContextTokens / sequences): short-context steps have at most the median of
	// their batch class, long-context ones more.
	MinContext float64 `json:"min_context"`
	MaxContext float64 `json:"max_context"`
	// Steps counts the class's steps.
	Steps int `json:"steps"`
	// MeasuredSeconds and PredictedSeconds are the total measured and modelled time of
	// the class's steps.
	MeasuredSeconds  float64 `json:"measured_s"`
	PredictedSeconds float64 `json:"predicted_s"`
}

// RelativeError is the class's predicted total over its measured total, minus 1; 0 for
// an empty class.
func (c StepClass) RelativeError() float64 {
	return relativeError(c.PredictedSeconds, c.MeasuredSeconds)
}

func relativeError(predicted, measured float64) float64 {
	if measured == 0 {
		return 0
	}
	return predicted/measured - 1
}

// FitReport says how well step-time coefficients reproduce measured steps: in total, per
// step, and per class of step. Fit computes it.
type FitReport struct {
	// Steps counts the measured steps.
	Steps int `json:"steps"`
	// R2 is the coefficient of determination of the predicted step durations.
	R2 float64 `json:"r2"`
	// MeanRelativeError is the mean of |predicted - measured| / measured over the steps.
	MeanRelativeError float64 `json:"mean_relative_error"`
	// MeasuredSeconds and PredictedSeconds are the total measured and modelled time of
	// all steps: how fast the model runs a simulation of the measured schedule.
	MeasuredSeconds  float64 `json:"measured_s"`
	PredictedSeconds float64 `json:"predicted_s"`
	// Classes are the steps split by batch (prefill, decode, mixed) and context (short,
	// long: at most or over the median context per sequence of their batch class), in that
	// order; classes without steps are left out.
	Classes []StepClass `json:"classes"`
}

// RelativeError is the predicted total time over the measured, minus 1.
func (r FitReport) RelativeError() float64 {
	return relativeError(r.PredictedSeconds, r.MeasuredSeconds)
}

// Fit measures coefficients against samples: R², the mean relative error, and the total
// time of all steps and of each class of step, measured and predicted.
func Fit(c LinearCoefficients, samples []Sample) FitReport {
	r := FitReport{Steps: len(samples)}
	r.R2, r.MeanRelativeError = Evaluate(c, samples)
	var class []int
	r.Classes, class = classify(samples)
	for i, s := range samples {
		p := c.predict(s.Shape)
		r.MeasuredSeconds += s.Seconds
		r.PredictedSeconds += p
		if class[i] >= 0 {
			r.Classes[class[i]].PredictedSeconds += p
		}
	}
	return r
}

// classify splits samples into step classes: by batch, prefill-only, decode-only or mixed,
// and each of these by context per sequence at the median of the batch class (short: at
// most the median; long: more). The median adapts the split to the context lengths of the
// traffic and model (a 512-token toy model and a 128K-token Llama alike) and halves every
// batch class, so a class with enough steps to judge has both halves judged; per sequence
// rather than per step, so that "long" means long sequences rather than big batches.
// It returns the non-empty classes with their steps' count and measured total, and each
// sample's class index (-1 for an empty step).
func classify(samples []Sample) ([]StepClass, []int) {
	class := make([]int, len(samples))
	var out []StepClass
	for k, kind := range stepKinds {
		var ctx []float64
		for _, s := range samples {
			if stepKind(s.Shape) == k {
				ctx = append(ctx, meanContext(s.Shape))
			}
		}
		if len(ctx) == 0 {
			continue
		}
		slices.Sort(ctx)
		median := ctx[(len(ctx)-1)/2]
		halves := [2]StepClass{
			{Class: kind + "/short", MinContext: ctx[0], MaxContext: median},
			{Class: kind + "/long", MaxContext: ctx[len(ctx)-1]},
		}
		// The first context over the median; the largest when there is none, and then
		// the long half is empty.
		first, _ := slices.BinarySearch(ctx, math.Nextafter(median, math.Inf(1)))
		halves[1].MinContext = ctx[min(first, len(ctx)-1)]
		for i, s := range samples {
			if stepKind(s.Shape) != k {
				continue
			}
			h := 0
			if meanContext(s.Shape) > median {
				h = 1
			}
			class[i] = len(out) + h
			halves[h].Steps++
			halves[h].MeasuredSeconds += s.Seconds
		}
		out = append(out, halves[0]) // the median's own half is never empty
		if halves[1].Steps > 0 {
			out = append(out, halves[1])
		}
	}
	for i, s := range samples {
		if stepKind(s.Shape) < 0 {
			class[i] = -1
		}
	}
	return out, class
}

// Validate reports a field that cannot be: negative counts or times, R² over 1, classes
// with more steps than the report. Errors name the JSON key.
func (r *FitReport) Validate() error {
	if r.Steps < 0 {
		return fmt.Errorf("field \"steps\": must not be negative, got %d", r.Steps)
	}
	if math.IsNaN(r.R2) || r.R2 > 1 {
		return fmt.Errorf("field \"r2\": %v is not at most 1", r.R2)
	}
	for _, f := range []struct {
		name  string
		value float64
	}{{"mean_relative_error", r.MeanRelativeError}, {"measured_s", r.MeasuredSeconds}, {"predicted_s", r.PredictedSeconds}} {
		if !(f.value >= 0) || math.IsInf(f.value, 0) {
			return fmt.Errorf("field %q: %v is not a non-negative number", f.name, f.value)
		}
	}
	steps := 0
	for i, c := range r.Classes {
		kind, ctx, _ := strings.Cut(c.Class, "/")
		if !slices.Contains(stepKinds[:], kind) || (ctx != "short" && ctx != "long") {
			return fmt.Errorf("field \"classes\"[%d]: class %q is not prefill, decode or mixed, then /short or /long", i, c.Class)
		}
		if c.Steps < 0 || !(c.MeasuredSeconds >= 0) || !(c.PredictedSeconds >= 0) || math.IsInf(c.MeasuredSeconds+c.PredictedSeconds, 0) {
			return fmt.Errorf("field \"classes\"[%d] (%s): steps and times must be non-negative numbers", i, c.Class)
		}
		if !(c.MinContext >= 0) || !(c.MaxContext >= c.MinContext) || math.IsInf(c.MaxContext, 0) {
			return fmt.Errorf("field \"classes\"[%d] (%s): context range [%v, %v] is not 0 <= min <= max", i, c.Class, c.MinContext, c.MaxContext)
		}
		steps += c.Steps
	}
	if steps > r.Steps {
		return fmt.Errorf("field \"classes\": %d steps in all, more than the report's %d", steps, r.Steps)
	}
	return nil
}

// String formats the report for a log: totals, R², then each class's steps and error.
func (r FitReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d steps, R² %.3f, total %.3f s measured, %.3f s predicted (%+.1f%%)",
		r.Steps, r.R2, r.MeasuredSeconds, r.PredictedSeconds, 100*r.RelativeError())
	for _, c := range r.Classes {
		fmt.Fprintf(&b, "; %s %d steps %+.1f%%", c.Class, c.Steps, 100*c.RelativeError())
	}
	return b.String()
}

// ReadSamples reads a step log ('servelab engine --step-log': one Sample per line);
// source names it in errors, with the line. The engine's lines also carry fields the fit
// does not use (end_unix_ns, running, waiting, kv_blocks_used, for fidelity --explain); they
// are skipped.
func ReadSamples(r io.Reader, source string) ([]Sample, error) {
	var samples []Sample
	dec := json.NewDecoder(bufio.NewReader(r))
	for line := 1; ; line++ {
		var s Sample
		if err := dec.Decode(&s); errors.Is(err, io.EOF) {
			return samples, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: step %d: %w", source, line, err)
		}
		if err := checkSample(s); err != nil {
			return nil, fmt.Errorf("%s: step %d: %w", source, line, err)
		}
		samples = append(samples, s)
	}
}

// LoadSamples reads a step log file; see ReadSamples.
func LoadSamples(path string) ([]Sample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadSamples(f, path)
}
