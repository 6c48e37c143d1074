package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"servelab/metrics"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
)

// explainStep is one engine step of either world in --explain's step logs: real engine i's
// steps and simulated instance i's steps are written in this one format.
type explainStep struct {
	// Step is the step's index on its engine or instance, from 0.
	Step int `json:"step"`
	// Start is when the step began, in seconds since the run's start (the load generator's
	// start in the real world, time 0 in the simulated one); Seconds is how long it took.
	Start   float64 `json:"start_s"`
	Seconds float64 `json:"seconds"`
	// Modelled is the latency model's time for the step's shape (the simulator's Seconds).
	Modelled float64           `json:"modelled_seconds"`
	Shape    serving.StepShape `json:"shape"`
	// Running, Waiting and KVBlocksUsed are the engine after the step.
	Running      int `json:"running"`
	Waiting      int `json:"waiting"`
	KVBlocksUsed int `json:"kv_blocks_used"`
}

// sameBatch reports whether two steps ran the same batch composition: prefill tokens and
// sequences, decode sequences.
func sameBatch(a, b *explainStep) bool {
	return a.Shape.PrefillTokens == b.Shape.PrefillTokens && a.Shape.PrefillSeqs == b.Shape.PrefillSeqs &&
		a.Shape.DecodeSeqs == b.Shape.DecodeSeqs
}

// divergence is where one engine's real and simulated schedules first differ.
type divergence struct {
	Engine    int `json:"engine"`
	RealSteps int `json:"real_steps"`
	SimSteps  int `json:"simulated_steps"`
	// Step is the first step index whose batch composition differs, or at which one world
	// has a step and the other none; -1 when the schedules are the same throughout.
	Step int `json:"step"`
	// Real and Sim are that step in each world (nil where the world has none).
	Real *explainStep `json:"real,omitempty"`
	Sim  *explainStep `json:"simulated,omitempty"`
}

// firstDivergence finds where two step sequences first run a different batch.
func firstDivergence(engine int, real, simulated []explainStep) divergence {
	d := divergence{Engine: engine, RealSteps: len(real), SimSteps: len(simulated), Step: -1}
	for k := range max(len(real), len(simulated)) {
		if k < len(real) && k < len(simulated) && sameBatch(&real[k], &simulated[k]) {
			continue
		}
		d.Step = k
		if k < len(real) {
			d.Real = &real[k]
		}
		if k < len(simulated) {
			d.Sim = &simulated[k]
		}
		break
	}
	return d
}

// ratioQuantiles are quantiles of the real steps' measured over modelled times.
type ratioQuantiles struct {
	Steps int     `json:"steps"`
	P10   float64 `json:"p10"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
}

// stepTimeRatios returns the p10, p50 and p90 of measured over modelled time over steps
// the model gives a positive time.
func stepTimeRatios(steps []explainStep) ratioQuantiles {
	var r []float64
	for _, s := range steps {
		if s.Modelled > 0 {
			r = append(r, s.Seconds/s.Modelled)
		}
	}
	slices.Sort(r)
	return ratioQuantiles{Steps: len(r), P10: metrics.Percentile(r, 10), P50: metrics.Percentile(r, 50), P90: metrics.Percentile(r, 90)}
}

// explainReport is --explain's comparison of one repeat's real and simulated schedules.
type explainReport struct {
	// Dir holds real-engine-I.jsonl and sim-instance-I.jsonl, explainStep lines.
	Dir         string         `json:"dir"`
	Divergences []divergence   `json:"divergences"`
	Ratios      ratioQuantiles `json:"measured_over_modelled"`
}

// simSteps collects the simulator's steps per instance (a sim.Config.OnStep).
type simSteps struct {
	model latency.Model
	steps [][]explainStep
}

func newSimSteps(instances int, model latency.Model) *simSteps {
	return &simSteps{model: model, steps: make([][]explainStep, instances)}
}

func (c *simSteps) observe(s sim.StepInfo) error {
	if s.Instance < 0 || s.Instance >= len(c.steps) {
		return fmt.Errorf("explain: step of instance %d of %d", s.Instance, len(c.steps))
	}
	in := c.steps[s.Instance]
	c.steps[s.Instance] = append(in, explainStep{
		Step: len(in), Start: s.Start, Seconds: s.End - s.Start, Modelled: c.model.StepTime(s.Shape), Shape: s.Shape,
		Running: s.Running, Waiting: s.Waiting, KVBlocksUsed: s.KVBlocksUsed,
	})
	return nil
}

// realSteps converts an engine's step log to explainSteps, timed from the run's start
// (startUnixNs, bench.Result.Start) and modelled by model.
func realSteps(log []stepLogRecord, startUnixNs int64, model latency.Model) []explainStep {
	out := make([]explainStep, len(log))
	for k, s := range log {
		out[k] = explainStep{
			Step: k, Start: float64(s.EndUnixNs-startUnixNs)/1e9 - s.Seconds, Seconds: s.Seconds,
			Modelled: model.StepTime(s.Shape), Shape: s.Shape,
			Running: s.Running, Waiting: s.Waiting, KVBlocksUsed: s.KVBlocksUsed,
		}
	}
	return out
}

// explainRepeat writes both worlds' steps to dir and compares them.
func explainRepeat(dir string, real, simulated [][]explainStep) (*explainReport, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	rep := &explainReport{Dir: dir}
	var all []explainStep
	for i := range max(len(real), len(simulated)) {
		var r, s []explainStep
		if i < len(real) {
			r = real[i]
		}
		if i < len(simulated) {
			s = simulated[i]
		}
		if err := writeJSONLines(filepath.Join(dir, fmt.Sprintf("real-engine-%d.jsonl", i)), r); err != nil {
			return nil, err
		}
		if err := writeJSONLines(filepath.Join(dir, fmt.Sprintf("sim-instance-%d.jsonl", i)), s); err != nil {
			return nil, err
		}
		rep.Divergences = append(rep.Divergences, firstDivergence(i, r, s))
		all = append(all, r...)
	}
	rep.Ratios = stepTimeRatios(all)
	return rep, nil
}

func writeJSONLines[T any](path string, items []T) error {
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := bufio.NewWriterSize(file, 1<<16)
	enc := json.NewEncoder(buf)
	for i := range items {
		if err = enc.Encode(&items[i]); err != nil {
			break
		}
	}
	if ferr := buf.Flush(); err == nil {
		err = ferr
	}
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	return err
}

// printExplain prints where each engine's schedules first diverge and the step-time ratios.
func printExplain(w io.Writer, e *explainReport) {
	fmt.Fprintf(w, "Schedules of repeat 1 (both worlds' steps in %s):\n", e.Dir)
	batch := func(s *explainStep) string {
		if s == nil {
			return "no step"
		}
		return fmt.Sprintf("at %7.3f s: prefill %d tok / %d seq, decode %d seq; after it KV %d blocks, %d running, %d waiting",
			s.Start, s.Shape.PrefillTokens, s.Shape.PrefillSeqs, s.Shape.DecodeSeqs, s.KVBlocksUsed, s.Running, s.Waiting)
	}
	for _, d := range e.Divergences {
		switch {
		case d.Step < 0 && d.RealSteps == 0:
			fmt.Fprintf(w, "  engine %d: no steps in either world\n", d.Engine)
			continue
		case d.Step < 0:
			fmt.Fprintf(w, "  engine %d: the same %d steps in both worlds\n", d.Engine, d.RealSteps)
			continue
		}
		fmt.Fprintf(w, "  engine %d: %d real steps, %d simulated; first divergence at step %d\n", d.Engine, d.RealSteps, d.SimSteps, d.Step)
		fmt.Fprintf(w, "    real %s\n    sim  %s\n", batch(d.Real), batch(d.Sim))
	}
	r := e.Ratios
	fmt.Fprintf(w, "  step time real/modelled over %d real steps: p10 %.2f  p50 %.2f  p90 %.2f\n", r.Steps, r.P10, r.P50, r.P90)
}
