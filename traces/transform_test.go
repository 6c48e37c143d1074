package traces

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestScaleTokensKeepsBlockSharing(t *testing.T) {
	rows := []Row{
		{InputTokens: 6758, OutputTokens: 500, HashBlockSize: 512, HashIDs: []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}},
		{InputTokens: 1024, OutputTokens: 3, HashBlockSize: 512, HashIDs: []int64{0, 1}},
		{InputTokens: 10, OutputTokens: 1},
	}
	got := readAll(t, ScaleTokens(&sliceReader{rows: rows}, 1.0/64))
	want := []Row{
		{InputTokens: 106, OutputTokens: 8, HashBlockSize: 8, HashIDs: []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}},
		{InputTokens: 16, OutputTokens: 2, HashBlockSize: 8, HashIDs: []int64{0, 1}},
		{InputTokens: 1, OutputTokens: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("scaled rows (-want +got):\n%s", diff)
	}
}

// ScaleLengths scales prompts and outputs apart; outputs of two tokens or more keep two,
// so TPOT (which needs two) survives, and the rows raised to two are counted.
func TestScaleLengths(t *testing.T) {
	// Azure's code trace: long prompts, short outputs.
	code := []Row{
		{InputTokens: 2048, OutputTokens: 28},
		{InputTokens: 4096, OutputTokens: 2},
		{InputTokens: 1000, OutputTokens: 1},
		{InputTokens: 700, OutputTokens: 13},
	}
	mooncake := []Row{{InputTokens: 6758, OutputTokens: 500, HashBlockSize: 512, HashIDs: []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}}}
	for _, tc := range []struct {
		name          string
		rows          []Row
		input, output float64
		want          []Row
		raised        int
	}{
		{"outputs kept", code, 1.0 / 16, 1, []Row{
			{InputTokens: 128, OutputTokens: 28}, {InputTokens: 256, OutputTokens: 2},
			{InputTokens: 63, OutputTokens: 1}, {InputTokens: 44, OutputTokens: 13}}, 0},
		// One factor for both, as before: short outputs round below two and are raised.
		{"one factor", code, 1.0 / 16, 1.0 / 16, []Row{
			{InputTokens: 128, OutputTokens: 2}, {InputTokens: 256, OutputTokens: 2},
			{InputTokens: 63, OutputTokens: 1}, {InputTokens: 44, OutputTokens: 2}}, 2},
		{"outputs halved", code, 1, 0.5, []Row{
			{InputTokens: 2048, OutputTokens: 14}, {InputTokens: 4096, OutputTokens: 2},
			{InputTokens: 1000, OutputTokens: 1}, {InputTokens: 700, OutputTokens: 7}}, 1},
		{"hash blocks follow the prompts", mooncake, 1.0 / 32, 0.25, []Row{
			{InputTokens: 211, OutputTokens: 125, HashBlockSize: 16, HashIDs: []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ScaleLengths(&sliceReader{rows: tc.rows}, tc.input, tc.output)
			if diff := cmp.Diff(tc.want, readAll(t, r)); diff != "" {
				t.Errorf("scaled rows (-want +got):\n%s", diff)
			}
			if got := r.OutputsRaised(); got != tc.raised {
				t.Errorf("OutputsRaised() = %d, want %d", got, tc.raised)
			}
		})
	}
}

func TestFitContext(t *testing.T) {
	rows := []Row{
		{InputTokens: 100, OutputTokens: 20},
		{InputTokens: 600, OutputTokens: 20, HashBlockSize: 64, HashIDs: []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{InputTokens: 100, OutputTokens: 900},
		{InputTokens: 1000, OutputTokens: 1000},
	}
	fit := FitContext(&sliceReader{rows: rows}, 512)
	got := readAll(t, fit)
	if diff := cmp.Diff(ClipCounts{Rows: 4, Clipped: 3, Prompts: 2, Outputs: 2, MaxLen: 512}, fit.Counts()); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	want := []Row{
		{InputTokens: 100, OutputTokens: 20},
		{InputTokens: 492, OutputTokens: 20, HashBlockSize: 64, HashIDs: []int64{1, 2, 3, 4, 5, 6, 7, 8}},
		{InputTokens: 100, OutputTokens: 256},
		{InputTokens: 256, OutputTokens: 256},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fitted rows (-want +got):\n%s", diff)
	}
	for _, r := range got {
		if r.InputTokens+r.OutputTokens > 512 {
			t.Errorf("row %+v exceeds the context", r)
		}
	}
}

func TestSkipStartsTheRestAtZero(t *testing.T) {
	rows := []Row{{Arrival: 0, InputTokens: 1}, {Arrival: 2, InputTokens: 2}, {Arrival: 5, InputTokens: 3}, {Arrival: 6, InputTokens: 4}}
	got := readAll(t, Limit(Skip(&sliceReader{rows: rows}, 2), 5))
	want := []Row{{Arrival: 0, InputTokens: 3}, {Arrival: 1, InputTokens: 4}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := readAll(t, Skip(&sliceReader{rows: rows}, 9)); len(got) != 0 {
		t.Errorf("skipping past the end left %v", got)
	}
}

func TestWindow(t *testing.T) {
	rows := []Row{{Arrival: 0, InputTokens: 1}, {Arrival: 2, InputTokens: 2}, {Arrival: 5, InputTokens: 3}, {Arrival: 6, InputTokens: 4}}
	got := readAll(t, Window(&sliceReader{rows: rows}, 2, 6))
	want := []Row{{Arrival: 0, InputTokens: 2}, {Arrival: 3, InputTokens: 3}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := readAll(t, Window(&sliceReader{rows: rows}, 5, 0)); len(got) != 2 {
		t.Errorf("an open window kept %d rows, want 2", len(got))
	}
}

func TestScanShape(t *testing.T) {
	rows := []Row{{Arrival: 0, InputTokens: 10, OutputTokens: 3}, {Arrival: 1.5, InputTokens: 30, OutputTokens: 4, HashIDs: []int64{1}, HashBlockSize: 512}}
	got, err := ScanShape(&sliceReader{rows: rows})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Shape{Rows: 2, Span: 1.5, MeanInput: 20, MeanOutput: 3.5, HashBlockSize: 512}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
