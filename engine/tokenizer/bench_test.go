package tokenizer

import "testing"

// benchText is about 10 KB of the corpus.
func benchText() string { return DefaultCorpus()[20000:30000] }

func BenchmarkEncode(b *testing.B) {
	for _, name := range []string{KindByteLevel, KindSentencePiece, "mistral", "qwen3"} {
		b.Run(name, func(b *testing.B) {
			var tok *Tokenizer
			if name == KindByteLevel || name == KindSentencePiece {
				tok = trained(b, name)
			} else {
				tok, _ = loadReal(b, name)
			}
			text := benchText()
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				tok.Encode(text, true)
			}
		})
	}
}

func BenchmarkEncodeUncached(b *testing.B) {
	tok, _ := loadReal(b, "qwen3")
	text := benchText()
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		tok.model.mu.Lock()
		clear(tok.model.cache)
		tok.model.mu.Unlock()
		tok.Encode(text, true)
	}
}

func BenchmarkDecoderStream(b *testing.B) {
	tok, _ := loadReal(b, "mistral")
	ids := tok.Encode(benchText(), true)
	b.SetBytes(int64(len(benchText())))
	for b.Loop() {
		d := tok.NewDecoder(true)
		for _, id := range ids {
			d.Add(id)
		}
		d.Flush()
	}
}

func BenchmarkTrain(b *testing.B) {
	for b.Loop() {
		if _, _, err := Train(DefaultCorpus(), TrainConfig{VocabSize: 2048, Kind: KindByteLevel}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoad(b *testing.B) {
	for b.Loop() {
		if _, err := Load("testdata/qwen3"); err != nil {
			b.Fatal(err)
		}
	}
}
