package main

import (
	"fmt"
	"math"
	"strconv"

	"servelab/traces"
)

// tokenScaleHelp is the --token-scale flag's help, the same in bench, sim and fidelity.
const tokenScaleHelp = "multiply the trace's prompt lengths (hash blocks scale with them), to replay big-model traffic on a small model; " +
	"auto: make the mean prompt a quarter of the model's context (at most 1) and clip requests to the context"

// outputTokenScaleHelp is the --output-token-scale flag's help, the same in bench, sim and
// fidelity. vLLM's `vllm bench serve` sets output lengths outright (--random-output-len,
// --sharegpt-output-len); a trace replay scales the trace's own lengths instead.
const outputTokenScaleHelp = "multiply the trace's output lengths, apart from the prompts (outputs of 2 tokens or more keep 2, so TPOT survives); " +
	"auto: 1, unless the mean output would take more than what half the context leaves beside the mean scaled prompt " +
	"(at most a quarter, at least an eighth of the context)"

// The auto scales' shares of the context. The mean prompt is scaled to a quarter of it
// (promptShare); the mean request, prompt and output, should fill at most half of it
// (requestShare), so the tails (Azure's p99 output is 3x its mean, Mooncake's p99 prompt
// 7x) mostly fit before FitContext clips them. Outputs keep their lengths unless their
// mean exceeds what that half leaves beside the scaled prompts, and are never scaled
// below an eighth of the context (outputFloorShare): where the prompts alone overflow it
// (Mooncake's, held at one KV block per 512-token hash block), TPOT and ITL still come
// from tens of tokens per request.
const (
	promptShare      = 0.25
	requestShare     = 0.5
	outputFloorShare = 0.125
)

// resolveTokenScale turns a --token-scale value into the prompts' factor: a positive
// number as given, or "auto", which makes the mean prompt of the workload s a quarter of
// the context, and, for traces with prefix hash ids, makes each hash block a whole number
// of blockSize-token KV blocks: the simulator shares only KV blocks that lie inside one
// hash block, and the real prompts share exactly the tokens of equal hash blocks, so the
// two agree only on whole blocks. bench, sim and fidelity all choose their scale here.
func resolveTokenScale(flag string, s traces.Shape, context, blockSize int) (float64, error) {
	if flag != "auto" {
		return parseScale("--token-scale", flag)
	}
	if context <= 0 {
		return 0, fmt.Errorf("--token-scale auto needs the model's context: give --max-model-len N (or --token-scale 1)")
	}
	if s.MeanInput <= 0 {
		return 1, nil
	}
	scale := math.Min(1, promptShare*float64(context)/s.MeanInput)
	if s.HashBlockSize > 0 && blockSize > 0 {
		blocks := math.Max(1, math.Round(float64(s.HashBlockSize)*scale/float64(blockSize)))
		scale = blocks * float64(blockSize) / float64(s.HashBlockSize)
	}
	return scale, nil
}

// resolveOutputTokenScale turns an --output-token-scale value into the outputs' factor: a
// positive number as given, or "auto": 1, so the outputs keep their lengths and their
// distribution (TPOT and ITL are measured on them, and a short output is as the trace has
// it, not an artefact of the prompts' scale), unless their mean would take more than half
// the context leaves beside the mean prompt scaled by inputScale; that budget is at most
// a quarter and at least an eighth of the context. Without a context (0) it is 1.
// Prompts are scaled to fit a small model's context, often by 1/16 or less; scaling the
// outputs by the same factor left 243 of 300 requests of an Azure code slice with a
// single output token, and no TPOT.
func resolveOutputTokenScale(flag string, s traces.Shape, inputScale float64, context int) (float64, error) {
	if flag != "auto" {
		return parseScale("--output-token-scale", flag)
	}
	if context <= 0 || s.MeanOutput <= 0 {
		return 1, nil
	}
	c := float64(context)
	budget := requestShare*c - inputScale*s.MeanInput
	budget = max(outputFloorShare*c, min(promptShare*c, budget))
	return math.Min(1, budget/s.MeanOutput), nil
}

func parseScale(name, flag string) (float64, error) {
	v, err := strconv.ParseFloat(flag, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("%s: want a positive number or auto, got %q", name, flag)
	}
	return v, nil
}

// tokenScales are the factors a replay scales a trace's lengths by, and the context it
// clips requests to (0: none).
type tokenScales struct {
	Input, Output float64
	Clip          int
}

// sliceShape is what scaling did to a workload: how many rows' outputs were raised to two
// tokens and how many rows were clipped to the context.
type sliceShape struct {
	OutputsRaised int
	traces.ClipCounts
}

// apply scales r's lengths and clips them to the context; the returned function reports
// what it did to the rows read so far.
func (ts tokenScales) apply(r traces.Reader) (traces.Reader, func() sliceShape) {
	var scaled *traces.LengthScaled
	if ts.Input != 1 || ts.Output != 1 {
		scaled = traces.ScaleLengths(r, ts.Input, ts.Output)
		r = scaled
	}
	var fitted *traces.Fitted
	if ts.Clip > 0 {
		fitted = traces.FitContext(r, ts.Clip)
		r = fitted
	}
	return r, func() sliceShape {
		var s sliceShape
		if scaled != nil {
			s.OutputsRaised = scaled.OutputsRaised()
		}
		if fitted != nil {
			s.ClipCounts = fitted.Counts()
		}
		return s
	}
}

// String says what scaling did, for a log line: "12 of 300 requests clipped to the
// 512-token context (12 prompts, 0 outputs), 3 outputs raised to 2 tokens".
func (s sliceShape) String() string {
	out := "no request clipped"
	if s.MaxLen > 0 {
		out = fmt.Sprintf("%d of %d requests clipped to the %d-token context (%d prompts, %d outputs)",
			s.Clipped, s.Rows, s.MaxLen, s.Prompts, s.Outputs)
	}
	return fmt.Sprintf("%s, %d outputs raised to 2 tokens", out, s.OutputsRaised)
}
