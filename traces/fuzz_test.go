package traces

import (
	"errors"
	"io"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// fuzzReader checks that a reader never panics, ends, and yields only valid rows.
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
			if !errors.As(err, &te) || te.File != "fuzz" || te.Line <= 0 {
				t.Fatalf("error %v does not locate the problem", err)
			}
			return
		}
		if row.InputTokens < 1 || row.OutputTokens < 1 || row.Arrival < last || math.IsNaN(row.Arrival) || math.IsInf(row.Arrival, 0) {
			t.Fatalf("invalid row accepted: %+v", row)
		}
		if len(row.HashIDs) > 0 && row.HashBlockSize <= 0 {
			t.Fatalf("hash ids without a block size: %+v", row)
		}
		last = row.Arrival
	}
}

func seed(f *testing.F, file string, lines int) {
	if data, err := os.ReadFile(file); err == nil {
		parts := strings.SplitAfterN(string(data), "\n", lines+1)
		f.Add(strings.Join(parts[:min(lines, len(parts))], ""))
	}
}

func FuzzAzure(f *testing.F) {
	seed(f, "testdata/azure_conv_200.csv", 4)
	f.Add("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1e3,44\n")
	f.Fuzz(func(t *testing.T, data string) { fuzzReader(t, Azure, data) })
}

func FuzzMooncake(f *testing.F) {
	seed(f, "testdata/mooncake_conv_200.jsonl", 3)
	f.Add(`{"timestamp": 1.5, "input_length": 3, "output_length": 2, "hash_ids": [-1]}`)
	f.Fuzz(func(t *testing.T, data string) { fuzzReader(t, Mooncake, data) })
}

func FuzzBurstGPT(f *testing.F) {
	seed(f, "testdata/burstgpt_sample.csv", 4)
	f.Fuzz(func(t *testing.T, data string) { fuzzReader(t, BurstGPT, data) })
}

func FuzzNative(f *testing.F) {
	f.Add(`{"arrival_s":0.5,"input_tokens":40,"output_tokens":3,"hash_ids":[1,2,3],"hash_block_size":16,"session_id":2,"priority":1}` + "\n" + `{"arrival_s":1,"input_tokens":1,"output_tokens":1}`)
	f.Fuzz(func(t *testing.T, data string) { fuzzReader(t, Native, data) })
}

// FuzzNativeFastPath checks that the fast native parser agrees with encoding/json on
// every line it accepts.
func FuzzNativeFastPath(f *testing.F) {
	f.Add(`{"arrival_s":0.5,"input_tokens":40,"output_tokens":3,"hash_ids":[1,-2,3],"hash_block_size":16,"session_id":2,"priority":-1}`)
	f.Add(`{ "input_tokens" : 1e2 , "arrival_s":1 , "output_tokens":7}`)
	f.Fuzz(func(t *testing.T, line string) {
		var fast nativeRow
		if !parseNativeFast([]byte(line), &fast) {
			return
		}
		var slow nativeRow
		l := newLineReader(strings.NewReader(""), "x")
		if err := l.decode([]byte(line), &slow, true); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json rejects it: %v", line, err)
		}
		if !cmp.Equal(fast, slow, cmpopts.EquateEmpty()) {
			t.Fatalf("fast path read %q as %+v, encoding/json as %+v", line, fast, slow)
		}
	})
}
