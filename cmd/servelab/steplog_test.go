package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/engine"
	"servelab/serving"
	"servelab/sim/latency"
)

// The step log's lines carry the engine's state after each step and when it ended, and
// still read as latency.Samples for the fit (profile --from-steps, calibration).
func TestStepLogRecordsStateAndStaysASample(t *testing.T) {
	path := filepath.Join(t.TempDir(), "steps.jsonl")
	l, err := newStepLog(path)
	if err != nil {
		t.Fatal(err)
	}
	st := engine.Stats{Running: 3, Waiting: 2, NumBlocks: 100, FreeBlocks: 60}
	l.stats = func() engine.Stats { return st }
	before := time.Now().UnixNano()
	shapes := []serving.StepShape{
		{PrefillTokens: 64, PrefillSeqs: 2, DecodeSeqs: 1, ContextTokens: 80, DecodeContextTokens: 16, PrefillAttention: 2048},
		{DecodeSeqs: 3, ContextTokens: 83, DecodeContextTokens: 83},
	}
	l.observe(shapes[0], 0.002)
	st.Waiting, st.FreeBlocks = 0, 55
	l.observe(shapes[1], 0.001)
	if err := l.close(); err != nil {
		t.Fatal(err)
	}
	after := time.Now().UnixNano()

	got, err := readStepLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("read %d steps, want 2", len(got))
	}
	for i, s := range got {
		if s.EndUnixNs < before || s.EndUnixNs > after || i > 0 && s.EndUnixNs < got[i-1].EndUnixNs {
			t.Errorf("step %d ended at %d, want in [%d, %d] and in order", i, s.EndUnixNs, before, after)
		}
		got[i].EndUnixNs = 0
	}
	want := []stepLogRecord{
		{Sample: latency.Sample{Shape: shapes[0], Seconds: 0.002}, Running: 3, Waiting: 2, KVBlocksUsed: 40},
		{Sample: latency.Sample{Shape: shapes[1], Seconds: 0.001}, Running: 3, Waiting: 0, KVBlocksUsed: 45},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("step log (-want +got):\n%s", diff)
	}
	samples, err := readSteps(path)
	if err != nil {
		t.Fatalf("the fit's reader: %v", err)
	}
	if diff := cmp.Diff([]latency.Sample{want[0].Sample, want[1].Sample}, samples); diff != "" {
		t.Errorf("samples (-want +got):\n%s", diff)
	}
}
