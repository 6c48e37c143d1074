package traces

import (
	"bytes"
	"errors"
	"io"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func readAll(t testing.TB, r Reader) []Row {
	t.Helper()
	var rows []Row
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

func openAll(t *testing.T, path string, format Format) []Row {
	t.Helper()
	r, c, err := Open(path, format)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return readAll(t, r)
}

func TestReadersOnSamples(t *testing.T) {
	approx := cmpopts.EquateApprox(0, 1e-9)
	tests := []struct {
		file      string
		rows      int
		first     Row
		lastAt    float64
		hashBlock int
	}{
		{"testdata/azure_conv_200.csv", 200, Row{Arrival: 0, InputTokens: 374, OutputTokens: 44, Line: 2}, 0, 0},
		{"testdata/azure_crlf.csv", 2, Row{Arrival: 0, InputTokens: 374, OutputTokens: 44, Line: 2}, 4.314579, 0},
		{"testdata/mooncake_conv_200.jsonl", 200, Row{}, 0, MooncakeBlockSize},
		{"testdata/burstgpt_sample.csv", 3, Row{Arrival: 0, InputTokens: 472, OutputTokens: 18, Line: 2}, 135, 0},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			rows := openAll(t, tc.file, "")
			if len(rows) != tc.rows {
				t.Fatalf("%d rows, want %d", len(rows), tc.rows)
			}
			if tc.first.InputTokens > 0 {
				if diff := cmp.Diff(tc.first, rows[0], approx); diff != "" {
					t.Errorf("first row (-want +got):\n%s", diff)
				}
			}
			if tc.lastAt > 0 && math.Abs(rows[len(rows)-1].Arrival-tc.lastAt) > 1e-9 {
				t.Errorf("last arrival %.9f, want %.9f", rows[len(rows)-1].Arrival, tc.lastAt)
			}
			for i, r := range rows {
				if r.HashBlockSize != tc.hashBlock || (tc.hashBlock > 0 && len(r.HashIDs) == 0) {
					t.Fatalf("row %d: hash block size %d with %d ids", i, r.HashBlockSize, len(r.HashIDs))
				}
				if i > 0 && r.Arrival < rows[i-1].Arrival {
					t.Fatalf("row %d goes back in time", i)
				}
			}
		})
	}
}

// TestSharedTraces reads the real traces in full where ../shared has them and checks the
// figures their README gives.
func TestSharedTraces(t *testing.T) {
	for _, tc := range []struct {
		file            string
		rows            int
		inMean, outMean float64
		span            float64
	}{
		{"../../shared/traces/azure_llm_2023_conv.csv", 19366, 1155, 211, 3502},
		{"../../shared/traces/mooncake_conversation.jsonl", 12031, 12035, 343, 3537},
	} {
		if _, err := os.Stat(tc.file); err != nil {
			t.Logf("skipping %s: not present (the shared traces live beside the repo)", tc.file)
			continue
		}
		r, c, err := Open(tc.file, "")
		if err != nil {
			t.Fatal(err)
		}
		st, err := Inspect(r)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if st.Rows != tc.rows || math.Abs(st.Input.Mean-tc.inMean) > 1 || math.Abs(st.Output.Mean-tc.outMean) > 1 || math.Abs(st.SpanSeconds-tc.span) > 1 {
			t.Errorf("%s: %d rows, input mean %.1f, output mean %.1f, span %.1f; want %d, %g, %g, %g",
				tc.file, st.Rows, st.Input.Mean, st.Output.Mean, st.SpanSeconds, tc.rows, tc.inMean, tc.outMean, tc.span)
		}
	}
}

func TestErrorsNameFileLineAndField(t *testing.T) {
	tests := []struct {
		name, format, data, want string
	}{
		{"azure bad count", "azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,abc,44\n", `bad.trace:2: field "ContextTokens": "abc" is not an integer`},
		{"azure zero output", "azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,3,0\n", `bad.trace:2: field "GeneratedTokens": 0 is below 1`},
		{"azure bad time", "azure", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,3,4\n", `bad.trace:2: field "TIMESTAMP"`},
		{"azure out of order", "azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.7,3,4\n2023-11-16 18:15:46.6,3,4\n", `bad.trace:3: field "TIMESTAMP": arrival`},
		{"azure missing column", "azure", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.7,3\n", `header lacks column "GeneratedTokens"`},
		{"azure short row", "azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.7,3\n", `bad.trace:2: field "GeneratedTokens": missing`},
		{"mooncake missing field", "mooncake", `{"timestamp": 0, "input_length": 10}` + "\n", `bad.trace:1: field "output_length": missing`},
		{"mooncake wrong type", "mooncake", `{"timestamp": 0, "input_length": "ten", "output_length": 1}` + "\n", `bad.trace:1: field "input_length"`},
		{"mooncake too many ids", "mooncake", `{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1, 2]}` + "\n", `field "hash_ids"`},
		{"mooncake malformed", "mooncake", "{\"timestamp\": 0}\n{oops\n", `bad.trace:1: field "input_length": missing`},
		{"native unknown field", "native", `{"arrival_s": 0, "input_tokens": 3, "output_tokens": 1, "colour": "red"}` + "\n", `bad.trace:1: field "colour": unknown field`},
		{"native negative time", "native", `{"arrival_s": -1, "input_tokens": 3, "output_tokens": 1}` + "\n", `field "arrival_s"`},
		{"native fractional tokens", "native", "\n\n" + `{"arrival_s": 0, "input_tokens": 3.5, "output_tokens": 1}` + "\n", `bad.trace:3: field "input_tokens": 3.5 is not an integer`},
		{"native hash ids without size", "native", `{"arrival_s": 0, "input_tokens": 3, "output_tokens": 1, "hash_ids": [4]}` + "\n", `field "hash_block_size"`},
		{"burstgpt bad timestamp", "burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\nsoon,ChatGPT,1,2,3,API log\n", `bad.trace:2: field "Timestamp"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReader(strings.NewReader(tc.data), "bad.trace", Format(tc.format))
			if err != nil {
				t.Fatal(err)
			}
			var got error
			for got == nil {
				_, got = r.Next()
			}
			if errors.Is(got, io.EOF) || !strings.Contains(got.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", got, tc.want)
			}
		})
	}
}

func TestDetectFormat(t *testing.T) {
	for file, want := range map[string]Format{
		"testdata/azure_conv_200.csv":      Azure,
		"testdata/mooncake_conv_200.jsonl": Mooncake,
		"testdata/burstgpt_sample.csv":     BurstGPT,
	} {
		got, err := DetectFormat(file)
		if err != nil || got != want {
			t.Errorf("DetectFormat(%s) = %q, %v; want %q", file, got, err, want)
		}
	}
	if _, err := detect("x.txt", []byte("hello,world\n")); err == nil || !strings.Contains(err.Error(), "--format") {
		t.Errorf("an unknown format is not reported with advice: %v", err)
	}
}

func TestNativeRoundTrip(t *testing.T) {
	rows := openAll(t, "testdata/mooncake_conv_200.jsonl", "")
	rows[3].Session, rows[4].Priority = 7, -2
	var buf bytes.Buffer
	w := NewNativeWriter(&buf)
	for _, r := range rows {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	back := readAll(t, NewNativeReader(&buf, "round-trip"))
	if diff := cmp.Diff(rows, back, cmpopts.IgnoreFields(Row{}, "Line")); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestScaleRateAndLimit(t *testing.T) {
	rows := readAll(t, Limit(ScaleRate(NewAzureReader(strings.NewReader(
		"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n2023-11-16 18:00:10,1,1\n2023-11-16 18:00:20,1,1\n"), "t"), 2), 2))
	var got []float64
	for _, r := range rows {
		got = append(got, r.Arrival)
	}
	if diff := cmp.Diff([]float64{0, 5}, got); diff != "" {
		t.Errorf("arrivals (-want +got):\n%s", diff)
	}
}

func TestBurstGPTSkipsFailedRequests(t *testing.T) {
	f, err := os.Open("testdata/burstgpt_sample.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := NewBurstGPTReader(f, "sample")
	readAll(t, r)
	if got := r.(*burstGPTReader).Skipped(); got != 1 {
		t.Errorf("skipped %d failed requests, want 1", got)
	}
}
