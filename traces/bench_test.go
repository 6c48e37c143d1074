package traces

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
)

// benchReader reads data in full with the given format per iteration and reports the
// cost per row.
func benchReader(b *testing.B, format Format, data []byte) {
	b.Helper()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	rows := 0
	for range b.N {
		r, err := NewReader(bytes.NewReader(data), "bench", format)
		if err != nil {
			b.Fatal(err)
		}
		for {
			_, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			rows++
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(rows), "ns/row")
}

func benchFile(b *testing.B, format Format, path string) {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Skipf("%s not present: %v", path, err)
	}
	benchReader(b, format, data)
}

func BenchmarkAzureSlice(b *testing.B)    { benchFile(b, Azure, "testdata/azure_conv_200.csv") }
func BenchmarkMooncakeSlice(b *testing.B) { benchFile(b, Mooncake, "testdata/mooncake_conv_200.jsonl") }
func BenchmarkBurstGPTSlice(b *testing.B) { benchFile(b, BurstGPT, "testdata/burstgpt_sample.csv") }
func BenchmarkAzureFull(b *testing.B)     { benchFile(b, Azure, sharedAzure) }
func BenchmarkMooncakeFull(b *testing.B)  { benchFile(b, Mooncake, sharedMooncake) }

func BenchmarkNativeSlice(b *testing.B) {
	var buf bytes.Buffer
	w := NewNativeWriter(&buf)
	for _, r := range openAll(b, "testdata/mooncake_conv_200.jsonl", "") {
		if err := w.Write(r); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	benchReader(b, Native, buf.Bytes())
}
