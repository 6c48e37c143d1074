package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/traces"
)

// azureCodeLike writes a slice shaped like Azure's LLM 2023 code trace: prompts of about
// 2,000 tokens, outputs mostly under 30 (the trace's median is 13).
func azureCodeLike(t *testing.T, rows int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("TIMESTAMP,ContextTokens,GeneratedTokens\n")
	for i := range rows {
		out := 2 + (i*37)%24 // 2..25
		if i%10 == 0 {
			out = 60 + i%120 // a tail of longer answers
		}
		if i%25 == 0 {
			out = 1
		}
		fmt.Fprintf(&b, "2023-11-16 18:%02d:%02d.0000000,%d,%d\n", i/60%60, i%60, 1000+(i*131)%2200, out)
	}
	path := filepath.Join(t.TempDir(), "code.csv")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func readRows(t *testing.T, r traces.Reader) []traces.Row {
	t.Helper()
	var rows []traces.Row
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			return rows
		}
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, row)
	}
}

// The auto scales keep a slice's shape on a small model's 512-token context: outputs keep
// their lengths (and at least 2 tokens, so TPOT has every request that had one) unless
// their mean would take more than a quarter of the context; what FitContext clips is
// counted.
func TestAutoTokenScalesKeepTheSliceShape(t *testing.T) {
	code := azureCodeLike(t, 300)
	for _, tc := range []struct {
		name, trace string
		in, out     float64
		want        sliceShape
	}{
		// Long prompts, short outputs: the prompts are scaled by about 1/16, the outputs
		// not at all (with one factor 264 of these 300 outputs rounded to 1 token).
		{"azure code", code, 0.06146, 1, sliceShape{ClipCounts: traces.ClipCounts{Rows: 300, MaxLen: 512}}},
		// Conversation: outputs of mean 256 get the quarter of the context the prompts
		// leave in its half; the prompts' tail is clipped.
		{"azure conversation", azureSlice, 0.1422, 0.4995, sliceShape{ClipCounts: traces.ClipCounts{Rows: 300, Clipped: 12, Prompts: 12, MaxLen: 512}}},
		// Mooncake's prompts keep one KV block per 512-token hash block (1/32), three times
		// what a quarter of the context asks: a third of them are clipped, and said so;
		// the outputs keep an eighth of the context.
		{"mooncake", mooncakeSlice, 0.03125, 0.1698, sliceShape{OutputsRaised: 7, ClipCounts: traces.ClipCounts{Rows: 300, Clipped: 99, Prompts: 99, Outputs: 2, MaxLen: 512}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := simFlags{trace: tc.trace, maxRequests: 300, rateScale: 1}
			scales, err := f.benchTokenScale("auto", "auto", 512, 16)
			if err != nil {
				t.Fatal(err)
			}
			if !near(scales.Input, tc.in) || !near(scales.Output, tc.out) || scales.Clip != 512 {
				t.Errorf("scales %+v, want input %.4g, output %.4g, clip 512", scales, tc.in, tc.out)
			}
			orig, closer, err := f.openTrace()
			if err != nil {
				t.Fatal(err)
			}
			defer closer.Close()
			before := readRows(t, orig)
			src, closer2, err := f.openTrace()
			if err != nil {
				t.Fatal(err)
			}
			defer closer2.Close()
			r, shaped := scales.apply(src)
			after := readRows(t, r)
			if diff := cmp.Diff(tc.want, shaped()); diff != "" {
				t.Errorf("slice shape (-want +got):\n%s", diff)
			}
			for i, row := range after {
				if o := before[i].OutputTokens; o >= 2 && row.OutputTokens < 2 {
					t.Errorf("row %d: output %d -> %d tokens: no TPOT left", i, o, row.OutputTokens)
				}
				if row.InputTokens+row.OutputTokens > 512 {
					t.Errorf("row %d: %d+%d tokens exceed the context", i, row.InputTokens, row.OutputTokens)
				}
				// Unclipped outputs scaled by 1 are the trace's own.
				if scales.Output == 1 && row.OutputTokens != max(1, before[i].OutputTokens) {
					t.Errorf("row %d: output %d -> %d tokens at output scale 1", i, before[i].OutputTokens, row.OutputTokens)
				}
			}
		})
	}
}

func near(got, want float64) bool { return got > want*0.999 && got < want*1.001 }

func TestResolveOutputTokenScale(t *testing.T) {
	for _, tc := range []struct {
		flag    string
		shape   traces.Shape
		input   float64
		context int
		want    float64
		err     string
	}{
		// Azure code: the mean output fits beside the prompt; outputs keep their lengths.
		{"auto", traces.Shape{MeanInput: 2048, MeanOutput: 28}, 1.0 / 16, 512, 1, ""},
		// Azure conversation: a quarter of the context is left for outputs of mean 256.
		{"auto", traces.Shape{MeanInput: 900, MeanOutput: 256}, 128.0 / 900, 512, 0.5, ""},
		// Unscaled prompts of mean 200 leave 56 tokens: still an eighth of the context.
		{"auto", traces.Shape{MeanInput: 200, MeanOutput: 128}, 1, 512, 0.5, ""},
		// Mooncake: prompts alone overflow half the context; outputs keep an eighth.
		{"auto", traces.Shape{MeanInput: 14233, MeanOutput: 377}, 1.0 / 32, 512, 64.0 / 377, ""},
		{"auto", traces.Shape{MeanOutput: 256}, 1, 0, 1, ""}, // context unknown
		{"auto", traces.Shape{}, 1, 512, 1, ""},
		{"0.25", traces.Shape{MeanOutput: 28}, 1, 512, 0.25, ""},
		{"0", traces.Shape{}, 1, 512, 0, `--output-token-scale: want a positive number or auto, got "0"`},
		{"x", traces.Shape{}, 1, 512, 0, `--output-token-scale: want a positive number or auto, got "x"`},
	} {
		got, err := resolveOutputTokenScale(tc.flag, tc.shape, tc.input, tc.context)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: err = %v, want %q", tc.flag, err, tc.err)
			}
			continue
		}
		if err != nil || !near(got, tc.want) {
			t.Errorf("%q %+v input x%.4g, context %d: %g, %v; want %g", tc.flag, tc.shape, tc.input, tc.context, got, err, tc.want)
		}
	}
}
