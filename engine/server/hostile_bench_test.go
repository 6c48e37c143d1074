package server

import (
	"strings"
	"testing"

	"servelab/engine/tokenizer"
)

// trainedTokenizer is a trained byte-level tokenizer as the server sees it.
type trainedTokenizer struct{ *tokenizer.Tokenizer }

func (trainedTokenizer) RenderChat(msgs []Message, gen bool) (string, error) {
	return byteTokenizer{}.RenderChat(msgs, gen)
}

// BenchmarkHugePrompt: a 30 MB prompt to a 256-token context, answered by the body limit
// sized from the context (413) or, with the former 32 MiB limit, after JSON decoding and
// the bounded tokenizer (400). B/op is the server's and the client's allocations.
func BenchmarkHugePrompt(b *testing.B) {
	tj, tc, err := tokenizer.Train(tokenizer.DefaultCorpus(), tokenizer.TrainConfig{VocabSize: 1024, Kind: tokenizer.KindByteLevel})
	if err != nil {
		b.Fatal(err)
	}
	tok, err := tokenizer.Parse(tj, tc)
	if err != nil {
		b.Fatal(err)
	}
	body := `{"prompt": "` + strings.Repeat("hello world ", 30<<20/12) + `", "max_tokens": 1}`
	for _, tc := range []struct {
		name    string
		maxBody int64
		status  int
	}{{"sized-limit", 0, 413}, {"32MiB-limit", DefaultMaxBodyBytes, 400}} {
		b.Run(tc.name, func(b *testing.B) {
			f := start(b, options{server: func(c *Config) { c.Tokenizer = trainedTokenizer{tok}; c.MaxBodyBytes = tc.maxBody }})
			b.ReportAllocs()
			for b.Loop() {
				if resp, data := f.post("/v1/completions", body); resp.StatusCode != tc.status {
					b.Fatalf("status %d, want %d: %.200s", resp.StatusCode, tc.status, data)
				}
			}
		})
	}
}
