package tokenizer

import _ "embed"

// corpus.txt is the end of the third book of Isaac Newton's Opticks (4th edition, 1730;
// public domain): its last observations and the 31 Queries, from the Project Gutenberg
// transcription that the Go distribution ships as src/testdata/Isaac.Newton-Opticks.txt
// (lines 7675 to the end, figure placeholders dropped). About 100 KB of English prose
// with numbers and punctuation; its word variety supports byte-level vocabularies of up
// to about 5,300 tokens and SentencePiece ones of up to about 6,700.
//
//go:embed corpus.txt
var corpus string

// DefaultCorpus returns the embedded training text for synthesised test models.
func DefaultCorpus() string { return corpus }
