package traces

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// fuzzReader checks that a reader never panics, ends, and yields only valid rows, and
// that its errors locate the problem.
func fuzzReader(t *testing.T, format Format, data string) {
	r, err := NewReader(strings.NewReader(data), "fuzz", format)
	if err != nil {
		t.Fatal(err)
	}
	last := 0.0
	for i := 0; ; i++ {
		if i > len(data)+1 {
			t.Fatalf("more rows than input lines")
		}
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			var te *Error
			if !errors.As(err, &te) || te.File != "fuzz" || te.Line <= 0 || te.Line > strings.Count(data, "\n")+1 {
				t.Fatalf("error %v does not locate the problem", err)
			}
			return
		}
		if row.InputTokens < 1 || row.OutputTokens < 1 || row.InputTokens > maxCount || row.OutputTokens > maxCount ||
			row.Arrival < last || math.IsNaN(row.Arrival) || math.IsInf(row.Arrival, 0) || (i == 0 && row.Arrival != 0) {
			t.Fatalf("invalid row accepted: %+v", row)
		}
		if (len(row.HashIDs) > 0) != (row.HashBlockSize > 0) {
			t.Fatalf("hash ids and block size disagree: %+v", row)
		}
		if n := len(row.HashIDs); n > 0 && (n-1)*row.HashBlockSize >= row.InputTokens {
			t.Fatalf("more hash ids than prompt blocks: %+v", row)
		}
		if row.Line < 1 || row.Line > strings.Count(data, "\n")+1 {
			t.Fatalf("row claims line %d", row.Line)
		}
		last = row.Arrival
	}
}

// seed adds the first lines of a test file to the corpus.
func seed(f *testing.F, file string, lines int) {
	f.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		f.Fatal(err)
	}
	parts := strings.SplitAfterN(string(data), "\n", lines+1)
	f.Add(strings.Join(parts[:min(lines, len(parts))], ""))
}

func FuzzAzure(f *testing.F) {
	seed(f, "testdata/azure_conv_200.csv", 4)
	seed(f, "testdata/azure_2024_format.csv", 4)
	f.Add("TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,1e3,44\r\n\"2023-11-16 18:15:47\",\"5\",6")
	f.Fuzz(func(t *testing.T, data string) { fuzzReader(t, Azure, data) })
}

func FuzzMooncake(f *testing.F) {
	seed(f, "testdata/mooncake_conv_200.jsonl", 3)
	f.Add(`{"timestamp": 1.5, "input_length": 3, "output_length": 2, "hash_ids": [-1], "extra": {"a": [1]}}`)
	f.Fuzz(func(t *testing.T, data string) { fuzzReader(t, Mooncake, data) })
}

func FuzzBurstGPT(f *testing.F) {
	seed(f, "testdata/burstgpt_sample.csv", 5)
	f.Add("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n0.5,\"GPT-4\",10,0,10,API log\n1e2,ChatGPT,3,4,7,x")
	f.Fuzz(func(t *testing.T, data string) { fuzzReader(t, BurstGPT, data) })
}

func FuzzNative(f *testing.F) {
	seed(f, "testdata/native_sample.jsonl", 4)
	f.Add(`{"arrival_s":0.5,"input_tokens":40,"output_tokens":3,"hash_ids":[1,2,3],"hash_block_size":16,"session_id":2,"priority":1,"model":"m\u00e9"}` + "\n" + `{"arrival_s":1,"input_tokens":1,"output_tokens":1}`)
	f.Fuzz(func(t *testing.T, data string) { fuzzReader(t, Native, data) })
}

// FuzzNativeFastPath checks that the fast native parser agrees with encoding/json on
// every line it accepts.
func FuzzNativeFastPath(f *testing.F) {
	f.Add(`{"arrival_s":0.5,"input_tokens":40,"output_tokens":3,"hash_ids":[1,-2,3],"hash_block_size":16,"session_id":2,"priority":-1,"model":"x"}`)
	f.Add(`{ "input_tokens" : 1e2 , "arrival_s":-0 , "output_tokens":123456789012345678}`)
	f.Fuzz(func(t *testing.T, line string) {
		var fast nativeFields
		if !parseNativeFast([]byte(line), &fast) {
			return
		}
		var raw nativeJSON
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&raw); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json rejects it: %v", line, err)
		}
		slow := nativeFields{ids: raw.HashIDs, blockSize: raw.HashBlockSize, session: raw.SessionID, priority: raw.Priority, model: []byte(raw.Model),
			objective: []byte(raw.Objective), fairness: []byte(raw.FairnessID)}
		slow.arrival, slow.hasArrival = deref(raw.ArrivalS)
		slow.in, slow.hasIn = deref(raw.InputTokens)
		slow.out, slow.hasOut = deref(raw.OutputTokens)
		if fast.model == nil {
			fast.model = []byte{}
		}
		if fast.objective == nil {
			fast.objective = []byte{}
		}
		if fast.fairness == nil {
			fast.fairness = []byte{}
		}
		if diff := cmp.Diff(slow, fast, cmp.AllowUnexported(nativeFields{}), cmpopts.EquateEmpty(), equalBits); diff != "" {
			t.Fatalf("%q: encoding/json and the fast path differ (-json +fast):\n%s", line, diff)
		}
	})
}

// FuzzMooncakeFastPath checks that the fast Mooncake parser agrees with encoding/json on
// every line it accepts.
func FuzzMooncakeFastPath(f *testing.F) {
	seed(f, "testdata/mooncake_conv_200.jsonl", 1)
	f.Add(`{"timestamp":27482,"input_length":6955,"output_length":52,"hash_ids":[46,47,48,49,50,51,52,53,54,55,56,57,2353,2354]}`)
	f.Add(`{"timestamp": 1E+2, "hash_ids": [], "hash_ids": [9223372036854775807, -9223372036854775808]}`)
	f.Fuzz(func(t *testing.T, line string) {
		var fast mooncakeFields
		if !parseMooncakeFast([]byte(line), &fast) {
			return
		}
		var raw mooncakeJSON
		if err := json.Unmarshal([]byte(line), &raw); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json rejects it: %v", line, err)
		}
		slow := mooncakeFields{ids: raw.HashIDs}
		slow.ts, slow.hasTS = deref(raw.Timestamp)
		slow.in, slow.hasIn = deref(raw.InputLength)
		slow.out, slow.hasOut = deref(raw.OutputLength)
		if diff := cmp.Diff(slow, fast, cmp.AllowUnexported(mooncakeFields{}), cmpopts.EquateEmpty(), equalBits); diff != "" {
			t.Fatalf("%q: encoding/json and the fast path differ (-json +fast):\n%s", line, diff)
		}
	})
}

// equalBits compares floats exactly, telling -0 from 0.
var equalBits = cmp.Comparer(func(a, b float64) bool { return math.Float64bits(a) == math.Float64bits(b) })

// FuzzAzureTime checks the timestamp parser against time.Parse on everything it accepts.
func FuzzAzureTime(f *testing.F) {
	for _, s := range []string{"2023-11-16 18:15:46.6805900", "2024-05-10 00:00:00.009930+00:00", "2024-02-29T23:59:59Z", "1999-12-31 23:59:59-0130", "2023-11-16 18:15:46"} {
		f.Add(s)
	}
	layouts := []string{"2006-01-02 15:04:05.999999999", "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z0700"}
	f.Fuzz(func(t *testing.T, s string) {
		ns, ok := parseAzureTime([]byte(s))
		if !ok {
			return
		}
		// time.Parse wants the layout's separator.
		norm := []byte(s)
		norm[10] = ' '
		for _, layout := range layouts {
			if tm, err := time.Parse(layout, string(norm)); err == nil {
				if tm.UnixNano() != ns {
					t.Fatalf("%q: %d ns, time.Parse says %d", s, ns, tm.UnixNano())
				}
				return
			}
		}
		t.Fatalf("%q accepted, but time.Parse reads it with none of %q", s, layouts)
	})
}

// FuzzCSVSplit checks the line splitter against encoding/csv (TrimLeadingSpace) on one
// line: both accept or both reject, with the same fields once trimmed.
func FuzzCSVSplit(f *testing.F) {
	for _, s := range []string{`a,b,c`, ` "a,b" , c`, `"x""y",`, `"open`, `a"b,c`, `"a"b`, `,,`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		if strings.ContainsAny(line, "\r\n") || strings.TrimSpace(line) == "" {
			return
		}
		c := newCSVRows(strings.NewReader(""), "fuzz")
		got, err := c.split([]byte(line), nil)
		cr := csv.NewReader(strings.NewReader(line))
		cr.FieldsPerRecord, cr.TrimLeadingSpace = -1, true
		want, werr := cr.Read()
		if (err == nil) != (werr == nil) {
			t.Fatalf("%q: split error %v, encoding/csv error %v", line, err, werr)
		}
		if err != nil {
			return
		}
		gotS := make([]string, len(got))
		for i, g := range got {
			gotS[i] = string(g)
		}
		for i := range want {
			want[i] = string(bytes.TrimSpace([]byte(want[i])))
		}
		if diff := cmp.Diff(want, gotS); diff != "" {
			t.Fatalf("%q: fields differ (-encoding/csv +split):\n%s", line, diff)
		}
	})
}
