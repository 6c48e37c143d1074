package traces

import (
	"bytes"
	"errors"
	"io"
	"math"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The shared traces live beside the repository; tests that need them skip without.
const (
	sharedAzure    = "../../shared/traces/azure_llm_2023_conv.csv"
	sharedMooncake = "../../shared/traces/mooncake_conversation.jsonl"
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

func openAll(t testing.TB, path string, format Format) []Row {
	t.Helper()
	r, c, err := Open(path, format)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return readAll(t, r)
}

func TestReadersOnSamples(t *testing.T) {
	tests := []struct {
		file  string
		rows  int
		first Row
		last  Row
	}{
		{"testdata/azure_conv_200.csv", 200,
			Row{Arrival: 0, InputTokens: 374, OutputTokens: 44, Line: 2},
			Row{Arrival: 61.263537, InputTokens: 1143, OutputTokens: 409, Line: 201}},
		{"testdata/azure_2024_format.csv", 4,
			Row{Arrival: 0, InputTokens: 1637, OutputTokens: 25, Line: 2},
			Row{Arrival: 0.990074, InputTokens: 2003, OutputTokens: 9, Line: 5}},
		{"testdata/azure_crlf.csv", 2,
			Row{Arrival: 0, InputTokens: 374, OutputTokens: 44, Line: 2},
			Row{Arrival: 4.314579, InputTokens: 396, OutputTokens: 109, Line: 3}},
		{"testdata/mooncake_conv_200.jsonl", 200,
			Row{Arrival: 0, InputTokens: 6758, OutputTokens: 500, HashIDs: []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, HashBlockSize: 512, Line: 1},
			Row{Arrival: 72, InputTokens: 19978, OutputTokens: 448, HashIDs: append([]int64{0}, seq(5176, 5214)...), HashBlockSize: 512, Line: 200}},
		{"testdata/burstgpt_sample.csv", 3,
			Row{Arrival: 0, InputTokens: 472, OutputTokens: 18, Model: "ChatGPT", Line: 2},
			Row{Arrival: 135, InputTokens: 1360, OutputTokens: 175, Model: "ChatGPT", Line: 5}},
		{"testdata/native_sample.jsonl", 3,
			Row{Arrival: 0, InputTokens: 40, OutputTokens: 8, HashIDs: []int64{1, 2, 3}, HashBlockSize: 16, Session: 1, Line: 1},
			Row{Arrival: 2.5, InputTokens: 60, OutputTokens: 12, HashIDs: []int64{1, 2, 3, 4}, HashBlockSize: 16, Session: 1, Line: 3}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			rows := openAll(t, tc.file, "")
			if len(rows) != tc.rows {
				t.Fatalf("%d rows, want %d", len(rows), tc.rows)
			}
			approx := cmpopts.EquateApprox(0, 1e-12)
			if diff := cmp.Diff(tc.first, rows[0], approx); diff != "" {
				t.Errorf("first row (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.last, rows[len(rows)-1], approx); diff != "" {
				t.Errorf("last row (-want +got):\n%s", diff)
			}
			for i := 1; i < len(rows); i++ {
				if rows[i].Arrival < rows[i-1].Arrival || rows[i].Line <= rows[i-1].Line {
					t.Fatalf("row %d goes back in time or lines", i)
				}
			}
		})
	}
}

// TestAzureArrivalsAreExact checks that 7 fractional digits survive: the difference is
// taken in integer nanoseconds and converted to seconds once.
func TestAzureArrivalsAreExact(t *testing.T) {
	rows := readAll(t, NewAzureReader(strings.NewReader(
		"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1,1\n2023-11-16 18:15:46.6805901,1,1\n2023-11-17 00:00:00.0000000,1,1\n"), "t"))
	got := []float64{rows[0].Arrival, rows[1].Arrival, rows[2].Arrival}
	// 18:15:46.6805900 to midnight is 5 h 44 min 13.3194100 s.
	want := []float64{0, 100e-9, float64(20653_319410000) / 1e9}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("arrivals (-want +got):\n%s", diff)
	}
}

// TestSharedTraces reads the real traces in full where ../shared has them and checks the
// figures their README gives.
func TestSharedTraces(t *testing.T) {
	for _, tc := range []struct {
		file                string
		rows                int
		span                float64
		in, out             Distribution // mean, p50, p99 from the README
		repeated, repeatTol float64
	}{
		{sharedAzure, 19366, 3502, Distribution{Mean: 1155, P50: 1020, P99: 4142}, Distribution{Mean: 211, P50: 129, P99: 601}, 0, 0},
		{sharedMooncake, 12031, 3537, Distribution{Mean: 12035, P50: 6909, P99: 85401}, Distribution{Mean: 343, P50: 350, P99: 1120}, 0.37, 0.005},
	} {
		t.Run(tc.file, func(t *testing.T) {
			if _, err := os.Stat(tc.file); err != nil {
				t.Skipf("%s is not present (the shared traces live beside the repository)", tc.file)
			}
			r, c, err := Open(tc.file, "")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			st, err := Inspect(r)
			if err != nil {
				t.Fatal(err)
			}
			if st.Rows != tc.rows {
				t.Errorf("%d rows, want %d", st.Rows, tc.rows)
			}
			for _, c := range []struct {
				name      string
				got, want float64
			}{
				{"span", st.SpanSeconds, tc.span},
				{"input mean", st.Input.Mean, tc.in.Mean}, {"input p50", st.Input.P50, tc.in.P50}, {"input p99", st.Input.P99, tc.in.P99},
				{"output mean", st.Output.Mean, tc.out.Mean}, {"output p50", st.Output.P50, tc.out.P50}, {"output p99", st.Output.P99, tc.out.P99},
			} {
				// The README rounds; its p99 may rank differently by a fraction of a token.
				if math.Abs(c.got-c.want) > max(1, 0.002*c.want) {
					t.Errorf("%s %.1f, README says %g", c.name, c.got, c.want)
				}
			}
			if math.Abs(st.RepeatedShare-tc.repeated) > tc.repeatTol+1e-12 {
				t.Errorf("%.4f of blocks repeat, README says %g", st.RepeatedShare, tc.repeated)
			}
		})
	}
}

func TestErrorsNameFileLineAndField(t *testing.T) {
	const azureHead = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
	const burstHead = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
	tests := []struct {
		name   string
		format Format
		data   string
		want   string
	}{
		{"azure bad count", Azure, azureHead + "2023-11-16 18:15:46.6805900,abc,44\n", `bad.csv:2: field "ContextTokens": "abc" is not an integer`},
		{"azure fractional count", Azure, azureHead + "2023-11-16 18:15:46.68,3.5,4\n", `bad.csv:2: field "ContextTokens": "3.5" is not an integer`},
		{"azure negative count", Azure, azureHead + "2023-11-16 18:15:46.68,-3,4\n", `bad.csv:2: field "ContextTokens": -3 is out of range (1 to 2147483647)`},
		{"azure zero input", Azure, azureHead + "2023-11-16 18:15:46.68,0,4\n", `bad.csv:2: field "ContextTokens": 0 is below 1`},
		{"azure zero output", Azure, azureHead + "2023-11-16 18:15:46.68,3,0\n", `bad.csv:2: field "GeneratedTokens": 0 is below 1`},
		{"azure huge count", Azure, azureHead + "2023-11-16 18:15:46.68,99999999999,4\n", `bad.csv:2: field "ContextTokens": 99999999999 is out of range`},
		{"azure bad time", Azure, azureHead + "yesterday,3,4\n", `bad.csv:2: field "TIMESTAMP": "yesterday" is not a time like 2023-11-16 18:15:46.6805900`},
		{"azure bad date", Azure, azureHead + "2023-02-29 18:15:46.68,3,4\n", `bad.csv:2: field "TIMESTAMP": "2023-02-29 18:15:46.68" is not a time`},
		{"azure out of order", Azure, azureHead + "2023-11-16 18:15:46.7,3,4\n\n2023-11-16 18:15:46.6,3,4\n", `bad.csv:4: field "TIMESTAMP": 2023-11-16 18:15:46.6 is before the previous row's time: the trace must be sorted by arrival`},
		{"azure missing column", Azure, "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.7,3\n", `bad.csv:1: header lacks column "GeneratedTokens" (has TIMESTAMP,ContextTokens)`},
		{"azure short row", Azure, azureHead + "2023-11-16 18:15:46.7,3\n", `bad.csv:2: field "GeneratedTokens": missing: the row has 2 fields`},
		{"azure stray quote", Azure, azureHead + "2023-11-16 18:15:46.7,3\",4\n", `bad.csv:2: stray quote in unquoted field 2`},
		{"azure open quote", Azure, azureHead + "\"2023-11-16 18:15:46.7,3,4\n", `bad.csv:2: unterminated quoted field`},
		{"empty file", Azure, "\n\n", `bad.csv:2: empty trace: no header line`},
		{"burstgpt bad timestamp", BurstGPT, burstHead + "soon,ChatGPT,1,2,3,API log\n", `bad.csv:2: field "Timestamp": "soon" is not a non-negative number of seconds`},
		{"burstgpt NaN timestamp", BurstGPT, burstHead + "NaN,ChatGPT,1,2,3,API log\n", `bad.csv:2: field "Timestamp": "NaN" is not`},
		{"burstgpt out of order", BurstGPT, burstHead + "5,ChatGPT,1,2,3,API log\n4,ChatGPT,1,2,3,API log\n", `bad.csv:3: field "Timestamp": 4 s is before the previous row's 5 s: the trace must be sorted by arrival`},
		{"burstgpt bad count", BurstGPT, burstHead + "5,ChatGPT,x,2,3,API log\n", `bad.csv:2: field "Request tokens": "x" is not an integer`},
		{"mooncake missing field", Mooncake, `{"timestamp": 0, "input_length": 10}` + "\n", `bad.csv:1: field "output_length": missing`},
		{"mooncake missing timestamp", Mooncake, `{"input_length": 10, "output_length": 1}` + "\n", `bad.csv:1: field "timestamp": missing`},
		{"mooncake wrong type", Mooncake, `{"timestamp": 0, "input_length": "ten", "output_length": 1}` + "\n", `bad.csv:1: field "input_length": string is not float64`},
		{"mooncake fractional", Mooncake, `{"timestamp": 0, "input_length": 10.5, "output_length": 1}` + "\n", `bad.csv:1: field "input_length": 10.5 is not an integer`},
		{"mooncake zero output", Mooncake, `{"timestamp": 0, "input_length": 10, "output_length": 0}` + "\n", `bad.csv:1: field "output_length": 0 is out of range (1 to 2147483647)`},
		{"mooncake negative time", Mooncake, `{"timestamp": -5, "input_length": 10, "output_length": 1}` + "\n", `bad.csv:1: field "timestamp": -5 is not a non-negative number of milliseconds`},
		{"mooncake too many ids", Mooncake, `{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1, 2]}` + "\n", `bad.csv:1: field "hash_ids": 2 ids for 10 input tokens (at most 1 blocks of 512)`},
		{"mooncake fractional id", Mooncake, `{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1.5]}` + "\n", `bad.csv:1: field "hash_ids": number 1.5 is not int64`},
		{"mooncake malformed", Mooncake, `{"timestamp": 0, "input_length": 10, "output_length": 1}` + "\n{oops\n", `bad.csv:2: malformed JSON at byte 2`},
		{"mooncake truncated", Mooncake, `{"timestamp": 0, "input_length": 10`, `bad.csv:1: truncated JSON object`},
		{"mooncake trailing text", Mooncake, `{"timestamp": 0, "input_length": 10, "output_length": 1} x`, `bad.csv:1: text after the JSON object: "x"`},
		{"mooncake array", Mooncake, `[1]`, `bad.csv:1: the line is a JSON array, not an object`},
		{"mooncake out of order", Mooncake, `{"timestamp": 5, "input_length": 10, "output_length": 1}` + "\r\n" + `{"timestamp": 4, "input_length": 10, "output_length": 1}`, `bad.csv:2: field "timestamp": 4 ms is before the previous row's 5 ms`},
		{"native negative SLO", Native, `{"arrival_s": 0, "input_tokens": 3, "output_tokens": 1, "slo_tpot_ms": -5}` + "\n", `bad.csv:1: field "slo_tpot_ms": -5 is not a non-negative number of milliseconds`},
		{"native unknown field", Native, `{"arrival_s": 0, "input_tokens": 3, "output_tokens": 1, "colour": "red"}` + "\n", `bad.csv:1: field "colour": unknown field`},
		{"native negative time", Native, `{"arrival_s": -1, "input_tokens": 3, "output_tokens": 1}` + "\n", `bad.csv:1: field "arrival_s": -1 is not a non-negative number of seconds`},
		{"native fractional tokens", Native, "\n\n" + `{"arrival_s": 0, "input_tokens": 3.5, "output_tokens": 1}` + "\n", `bad.csv:3: field "input_tokens": 3.5 is not an integer`},
		{"native hash ids without size", Native, `{"arrival_s": 0, "input_tokens": 3, "output_tokens": 1, "hash_ids": [4]}` + "\n", `bad.csv:1: field "hash_block_size": missing: hash_ids need the tokens each id covers`},
		{"native too many ids", Native, `{"arrival_s": 0, "input_tokens": 16, "output_tokens": 1, "hash_ids": [4, 5], "hash_block_size": 16}` + "\n", `bad.csv:1: field "hash_ids": 2 ids of 16 tokens for 16 input tokens`},
		{"native negative session", Native, `{"arrival_s": 0, "input_tokens": 3, "output_tokens": 1, "session_id": -1}` + "\n", `bad.csv:1: field "session_id": number -1 is not uint64`},
		{"native out of order", Native, `{"arrival_s": 2, "input_tokens": 3, "output_tokens": 1}` + "\n" + `{"arrival_s": 1, "input_tokens": 3, "output_tokens": 1}`, `bad.csv:2: field "arrival_s": 1 s is before the previous row's 2 s`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReader(strings.NewReader(tc.data), "bad.csv", tc.format)
			if err != nil {
				t.Fatal(err)
			}
			var got error
			for got == nil {
				_, got = r.Next()
			}
			if errors.Is(got, io.EOF) || !strings.HasPrefix(got.Error(), tc.want) {
				t.Errorf("error %v\nwant one starting %q", got, tc.want)
			}
		})
	}
}

// TestLineEndings reads the same rows however lines end, with blank lines anywhere and
// without a final newline.
func TestLineEndings(t *testing.T) {
	for _, tc := range []struct {
		format Format
		lines  []string
	}{
		{Azure, []string{"TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:50.9951690,396,109"}},
		{BurstGPT, []string{"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type", "5,ChatGPT,472,18,490,Conversation log", "118,GPT-4,417,276,693,API log"}},
		{Mooncake, []string{`{"timestamp": 0, "input_length": 10, "output_length": 1}`, `{"timestamp": 27, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}`}},
		{Native, []string{`{"arrival_s":0,"input_tokens":3,"output_tokens":1}`, `{"arrival_s":1.5,"input_tokens":30,"output_tokens":2,"hash_ids":[7,8],"hash_block_size":16}`}},
	} {
		t.Run(string(tc.format), func(t *testing.T) {
			read := func(data string) []Row {
				r, err := NewReader(strings.NewReader(data), "t", tc.format)
				if err != nil {
					t.Fatal(err)
				}
				return readAll(t, r)
			}
			plain := read(strings.Join(tc.lines, "\n") + "\n")
			if len(plain) != 2 {
				t.Fatalf("%d rows, want 2", len(plain))
			}
			ignoreLine := cmpopts.IgnoreFields(Row{}, "Line")
			for name, data := range map[string]string{
				"crlf":            strings.Join(tc.lines, "\r\n") + "\r\n",
				"no final eol":    strings.Join(tc.lines, "\n"),
				"blank lines":     "\n" + strings.Join(tc.lines, "\n\n  \n") + "\n\n\r\n",
				"bom and crlf":    "\ufeff" + strings.Join(tc.lines, "\r\n"),
				"spaces in lines": "  " + strings.Join(tc.lines, "  \n  ") + "\t",
			} {
				if diff := cmp.Diff(plain, read(data), ignoreLine); diff != "" {
					t.Errorf("%s (-want +got):\n%s", name, diff)
				}
			}
		})
	}
}

func TestCSVQuotedFields(t *testing.T) {
	data := "\"Timestamp\",Model,Request tokens,Response tokens,Total tokens,Log Type\n" +
		`0,"GPT-4, ""turbo""",12,"34",46,"API log"` + "\n"
	rows := readAll(t, NewBurstGPTReader(strings.NewReader("\ufeff"+data), "q"))
	want := []Row{{Arrival: 0, InputTokens: 12, OutputTokens: 34, Model: `GPT-4, "turbo"`, Line: 2}}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
}

func TestAzureTimestamps(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // ns since the epoch; 0 for invalid
	}{
		{"1970-01-01 00:00:00", 0},
		{"1970-01-01 00:00:01.5", 1.5e9},
		{"2023-11-16 18:15:46.6805900", 1700158546680590000},
		{"2023-11-16T18:15:46.6805900Z", 1700158546680590000},
		{"2024-05-10 00:00:00.009930+00:00", 1715299200009930000},
		{"2024-05-10 02:00:00.009930+02:00", 1715299200009930000},
		{"2024-05-09 22:30:00.009930-0130", 1715299200009930000},
		{"2024-02-29 00:00:00", 1709164800e9},
		{"2000-03-01 00:00:00.123456789", 951868800123456789},
	} {
		got, ok := parseAzureTime([]byte(tc.in))
		if !ok || got != tc.want {
			t.Errorf("parseAzureTime(%q) = %d, %v; want %d", tc.in, got, ok, tc.want)
		}
	}
	for _, bad := range []string{"", "2023-11-16", "2023-11-16 18:15", "2023-13-01 00:00:00", "2023-02-29 00:00:00", "1900-02-29 00:00:00",
		"2023-11-16 24:00:00", "2023-11-16 18:60:00", "2023-11-16 18:15:60", "2023-11-16 18:15:46.", "2023-11-16 18:15:46.1234567890",
		"2023-11-16 18:15:46+0", "2023-11-16 18:15:46 UTC", "2023-11-16 18:15:46.5+24:00", "2023/11/16 18:15:46", "1800-01-01 00:00:00", "2023-11-16 18:15:4x"} {
		if got, ok := parseAzureTime([]byte(bad)); ok {
			t.Errorf("parseAzureTime(%q) accepted as %d", bad, got)
		}
	}
}

func TestDetectFormat(t *testing.T) {
	for file, want := range map[string]Format{
		"testdata/azure_conv_200.csv":      Azure,
		"testdata/azure_2024_format.csv":   Azure,
		"testdata/azure_crlf.csv":          Azure,
		"testdata/mooncake_conv_200.jsonl": Mooncake,
		"testdata/burstgpt_sample.csv":     BurstGPT,
		"testdata/native_sample.jsonl":     Native,
	} {
		got, err := DetectFormat(file)
		if err != nil || got != want {
			t.Errorf("DetectFormat(%s) = %q, %v; want %q", file, got, err, want)
		}
	}
	for name, head := range map[string]string{"x.csv": "hello,world\n", "x.jsonl": `{"a": 1}`, "x": ""} {
		if _, err := detect(name, []byte(head)); err == nil || !strings.Contains(err.Error(), "--format") {
			t.Errorf("%s: an unknown format is not reported with advice: %v", name, err)
		}
	}
	if _, _, err := Open("testdata/burstgpt_sample.csv", "parquet"); err == nil || !strings.Contains(err.Error(), `"parquet"`) {
		t.Errorf("an unknown format name is not reported: %v", err)
	}
}

// TestOpenFS reads from an fs.FS, as an embedded trace is read.
func TestOpenFS(t *testing.T) {
	data, err := os.ReadFile("testdata/azure_conv_200.csv")
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{"traces/azure.csv": {Data: data}}
	r, c, err := OpenFS(fsys, "traces/azure.csv", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if diff := cmp.Diff(openAll(t, "testdata/azure_conv_200.csv", Azure), readAll(t, r)); diff != "" {
		t.Errorf("rows from an fs.FS differ (-file +fs):\n%s", diff)
	}
}

// TestReadersStream checks that a row is available before the rest of the input exists.
func TestReadersStream(t *testing.T) {
	for _, tc := range []struct {
		format      Format
		first, more string
	}{
		{Azure, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n", "2023-11-16 18:15:50.9951690,396,109\n"},
		{Mooncake, `{"timestamp": 0, "input_length": 10, "output_length": 1}` + "\n", `{"timestamp": 1, "input_length": 10, "output_length": 1}` + "\n"},
	} {
		pr, pw := io.Pipe()
		r, err := NewReader(pr, "pipe", tc.format)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			pw.Write([]byte(tc.first))
		}()
		if _, err := r.Next(); err != nil {
			t.Fatalf("%s: first row: %v", tc.format, err)
		}
		go func() {
			pw.Write([]byte(tc.more))
			pw.Close()
		}()
		if rows := readAll(t, r); len(rows) != 1 {
			t.Errorf("%s: %d more rows, want 1", tc.format, len(rows))
		}
	}
}

func TestNativeRoundTrip(t *testing.T) {
	rows := openAll(t, "testdata/mooncake_conv_200.jsonl", "")
	rows[3].Session, rows[4].Priority, rows[5].Model, rows[6].Model = 7, -2, "llama-3.1-8b", "quote \" tab \t é \x01"
	rows[7].Objective, rows[7].FairnessID, rows[8].Objective = "critical", "tenant \"a\"", "sheddable"
	rows[7].TTFTSLOMs, rows[7].TPOTSLOMs, rows[8].TPOTSLOMs = 500, 25.5, 40
	rows[len(rows)-1].Arrival = math.Nextafter(rows[len(rows)-1].Arrival, math.Inf(1))
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

// TestNativeSlowPathAgrees feeds rows the fast parser leaves to encoding/json.
func TestNativeSlowPathAgrees(t *testing.T) {
	lines := []string{
		`{"arrival_s":0,"input_tokens":3,"output_tokens":1,"model":"a\u0062"}`,
		`{"arrival_s":0,"input_tokens":3,"output_tokens":1,"objective":"crit\u0069cal","fairness_id":"t"}`,
		`{"arrival_s":1,"input_tokens":3,"output_tokens":1,"hash_ids":null,"session_id":18446744073709551615}`,
		`{"arrival_\u0073":2,"input_tokens":3,"output_tokens":1}`,
		`{"arrival_s":3,"input_tokens":3,"output_tokens":1,"slo_ttft_ms":1e3,"slo_tpot_\u006ds":50}`,
	}
	rows := readAll(t, NewNativeReader(strings.NewReader(strings.Join(lines, "\n")), "slow"))
	want := []Row{
		{Arrival: 0, InputTokens: 3, OutputTokens: 1, Model: "ab", Line: 1},
		{Arrival: 0, InputTokens: 3, OutputTokens: 1, Objective: "critical", FairnessID: "t", Line: 2},
		{Arrival: 1, InputTokens: 3, OutputTokens: 1, Session: math.MaxUint64, Line: 3},
		{Arrival: 2, InputTokens: 3, OutputTokens: 1, Line: 4},
		{Arrival: 3, InputTokens: 3, OutputTokens: 1, TTFTSLOMs: 1000, TPOTSLOMs: 50, Line: 5},
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
}

// TestHashIDsAreIndependent checks that rows carved from one slab do not share storage.
func TestHashIDsAreIndependent(t *testing.T) {
	rows := openAll(t, "testdata/mooncake_conv_200.jsonl", "")
	before := append([]int64(nil), rows[1].HashIDs...)
	rows[0].HashIDs = append(rows[0].HashIDs, -1, -1, -1)
	if diff := cmp.Diff(before, rows[1].HashIDs); diff != "" {
		t.Errorf("appending to one row's ids changed the next row's (-want +got):\n%s", diff)
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
	r, c, err := Open("testdata/burstgpt_sample.csv", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := Inspect(ScaleRate(r, 1))
	if err != nil {
		t.Fatal(err)
	}
	if st.Rows != 3 || st.Skipped != 1 {
		t.Errorf("%d rows with %d failed requests skipped, want 3 and 1", st.Rows, st.Skipped)
	}
	var buf bytes.Buffer
	if err := st.WriteText(&buf); err != nil || !strings.Contains(buf.String(), "skipped        1 failed") {
		t.Errorf("text %q, %v: want the skipped rows", buf.String(), err)
	}
}

// seq is the integers from lo to hi.
func seq(lo, hi int64) []int64 {
	var out []int64
	for i := lo; i <= hi; i++ {
		out = append(out, i)
	}
	return out
}
