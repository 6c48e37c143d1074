package sim

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"servelab/traces"
)

// TestOnStepSeesEveryStep: the step observer gets every step of every instance, in order
// per instance, timed by the latency model, with the instance's state after the step; and
// running ahead reports exactly the steps the plain event schedule reports.
func TestOnStepSeesEveryStep(t *testing.T) {
	rows := randomRows(200, 7)
	collect := func(queueEveryStep bool) (Result, [][]StepInfo) {
		t.Helper()
		cfg := testConfig(t, 3, "least-request", "vllm", 400)
		steps := make([][]StepInfo, cfg.Instances)
		cfg.OnStep = func(s StepInfo) error {
			steps[s.Instance] = append(steps[s.Instance], s)
			return nil
		}
		res, _ := runCollect(t, cfg, rows, queueEveryStep)
		return res, steps
	}
	res, steps := collect(false)
	model := testConfig(t, 1, "round-robin", "vllm", 1).Latency
	var n int64
	prefill, maxKV := 0, 0
	for i, in := range steps {
		for k, s := range in {
			if want := s.Start + model.StepTime(s.Shape); s.End != want {
				t.Fatalf("instance %d step %d: ends at %v, want start %v + the model's %v", i, k, s.End, s.Start, want-s.Start)
			}
			if k > 0 && s.Start < in[k-1].End {
				t.Fatalf("instance %d step %d starts at %v, before step %d ended (%v)", i, k, s.Start, k-1, in[k-1].End)
			}
			if s.KVBlocksUsed < 0 || s.KVBlocksUsed > 400 || s.Running < 0 || s.Waiting < 0 {
				t.Fatalf("instance %d step %d: state after the step %+v", i, k, s)
			}
			if s.Shape.Tokens() == 0 {
				t.Fatalf("instance %d step %d computes nothing", i, k)
			}
			prefill += s.Shape.PrefillTokens
			maxKV = max(maxKV, s.KVBlocksUsed)
		}
		n += int64(len(in))
	}
	if maxKV == 0 {
		t.Error("no step left a KV block in use")
	}
	if n != res.Steps {
		t.Errorf("observed %d steps, the run reports %d", n, res.Steps)
	}
	// Every prompt token not served from the prefix cache is prefilled once (or again
	// after a preemption).
	total := 0
	for _, r := range rows {
		total += r.InputTokens
	}
	if prefill < total-int(float64(total)*res.Summary.PrefixCacheHitRate)-1 || prefill == 0 {
		t.Errorf("prefilled %d tokens of %d prompt tokens (hit rate %.3f)", prefill, total, res.Summary.PrefixCacheHitRate)
	}
	if _, plain := collect(true); !cmp.Equal(steps, plain) {
		t.Errorf("running ahead reports other steps than the plain schedule:\n%s", cmp.Diff(plain, steps))
	}
}

// An error from OnStep ends the run with that error.
func TestOnStepErrorStopsTheRun(t *testing.T) {
	cfg := testConfig(t, 1, "round-robin", "vllm", 100)
	errStop := errors.New("stop")
	calls := 0
	cfg.OnStep = func(StepInfo) error {
		calls++
		return errStop
	}
	_, err := Run(cfg, &sliceReader{rows: []traces.Row{{InputTokens: 40, OutputTokens: 5}, {Arrival: 1, InputTokens: 40, OutputTokens: 5}}})
	if !errors.Is(err, errStop) || calls != 1 {
		t.Fatalf("err = %v after %d calls, want %v after 1", err, calls, errStop)
	}
}
