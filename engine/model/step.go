package model

import (
	"errors"
	"fmt"
	"math"
)

// AttnQueryBlock is how many query tokens of one (sequence, head) an attention work item
// covers, so a long prefill chunk splits across threads (and across GPU thread blocks:
// cuda/kernels' AttnQueryTile is the same number).
const AttnQueryBlock = 16

// AttnItem is one unit of attention work: queries [Q0, Q1) of head Head of sequence Seq.
// Its memory layout, four int32, is the items array cuda/kernels' AttnPrefill reads.
type AttnItem struct {
	Seq, Head, Q0, Q1 int32
}

// Step is one forward step's batch layout, built once by [Step.Build] from the engine's
// inputs and handed to a [Kernels] backend: the CPU kernels read it in place, the GPU
// backend uploads its arrays. Rows are the step's tokens, sequences concatenated in
// batch order. Every array is reused from step to step.
type Step struct {
	// Batch is the step's inputs (the caller's; not kept after the step).
	Batch []SeqInput
	// BlockSize is tokens per KV block.
	BlockSize int

	// Per row t in [0, T): its token, position, sequence (index into Batch) and KV cache
	// slot: block Blocks[pos/BlockSize] times BlockSize plus pos%BlockSize.
	Tokens, Pos, RowSeq, Slot []int32

	// SeqStart[i] is the first row of sequence i; SeqStart[len(Batch)] is T. SeqPos[i] is
	// Batch[i].Pos.
	SeqStart, SeqPos []int32
	// BlockTables is every sequence's block table flattened, [len(Batch), MaxBlocks]: the
	// blocks covering positions [0, Pos+len(Tokens)), the rest of a row 0 (never read).
	BlockTables []int32
	MaxBlocks   int

	// Items is the attention work of every sequence with tokens: per sequence and query
	// head, blocks of AttnQueryBlock query tokens (what the CPU kernels parallelise over).
	Items []AttnItem
	// DecodeSeqs are the sequences with exactly one token this step, and PrefillItems the
	// items of the others: the GPU runs a decode kernel over the former and a prefill
	// kernel over the latter. Together they cover Items.
	DecodeSeqs   []int32
	PrefillItems []AttnItem

	// LogitRows are the rows whose logits the step returns (the last row of each
	// sequence with Logits set), in batch order.
	LogitRows []int32
	// GreedyLogits are the indices into LogitRows of the rows whose sequence is Greedy,
	// ascending: a [TokenKernels] backend returns their argmax instead of their logits.
	GreedyLogits []int32
	// MaxCtx is the longest context of the step: max of Pos+len(Tokens).
	MaxCtx int
}

// T is the step's number of rows (tokens).
func (s *Step) T() int { return len(s.Tokens) }

// Build lays out batch for a model of config c over a KV cache of numBlocks blocks of
// blockSize tokens. It fails on inconsistent input (a token outside the vocabulary, a
// block table too short for the positions, a block id outside the cache, a negative
// position, logits asked of a sequence without tokens), before anything is computed.
func (s *Step) Build(batch []SeqInput, c *Config, numBlocks, blockSize int) error {
	s.Batch, s.BlockSize = batch, blockSize
	s.Tokens, s.Pos, s.RowSeq, s.Slot = s.Tokens[:0], s.Pos[:0], s.RowSeq[:0], s.Slot[:0]
	s.SeqStart, s.SeqPos = s.SeqStart[:0], s.SeqPos[:0]
	s.Items, s.DecodeSeqs, s.PrefillItems = s.Items[:0], s.DecodeSeqs[:0], s.PrefillItems[:0]
	s.LogitRows, s.GreedyLogits = s.LogitRows[:0], s.GreedyLogits[:0]
	s.MaxCtx, s.MaxBlocks = 0, 0
	if blockSize <= 0 {
		return errors.New("model: Forward: block size must be positive")
	}
	if int64(numBlocks)*int64(blockSize) > math.MaxInt32 {
		return fmt.Errorf("model: Forward: %d blocks of %d tokens: slots overflow int32", numBlocks, blockSize)
	}
	for i := range batch {
		in := &batch[i]
		if err := checkSeq(i, in, c.Vocab, numBlocks, blockSize); err != nil {
			s.Batch = nil
			return err
		}
		end := in.Pos + len(in.Tokens)
		if end > math.MaxInt32 {
			s.Batch = nil
			return fmt.Errorf("model: Forward: sequence %d: position %d overflows int32", i, end)
		}
		s.MaxCtx = max(s.MaxCtx, end)
		if len(in.Tokens) > 0 {
			s.MaxBlocks = max(s.MaxBlocks, (end+blockSize-1)/blockSize)
		}
	}
	for i := range batch {
		in := &batch[i]
		s.SeqStart = append(s.SeqStart, int32(len(s.Tokens)))
		s.SeqPos = append(s.SeqPos, int32(in.Pos))
		for j, tok := range in.Tokens {
			p := in.Pos + j
			s.Tokens = append(s.Tokens, tok)
			s.Pos = append(s.Pos, int32(p))
			s.RowSeq = append(s.RowSeq, int32(i))
			s.Slot = append(s.Slot, in.Blocks[p/blockSize]*int32(blockSize)+int32(p%blockSize))
		}
		if in.Logits {
			if in.Greedy {
				s.GreedyLogits = append(s.GreedyLogits, int32(len(s.LogitRows)))
			}
			s.LogitRows = append(s.LogitRows, int32(len(s.Tokens)-1))
		}
		n := len(in.Tokens)
		if n == 1 {
			s.DecodeSeqs = append(s.DecodeSeqs, int32(i))
		}
		for h := range c.Heads {
			for q0 := 0; q0 < n; q0 += AttnQueryBlock {
				it := AttnItem{Seq: int32(i), Head: int32(h), Q0: int32(q0), Q1: int32(min(n, q0+AttnQueryBlock))}
				s.Items = append(s.Items, it)
				if n > 1 {
					s.PrefillItems = append(s.PrefillItems, it)
				}
			}
		}
	}
	s.SeqStart = append(s.SeqStart, int32(len(s.Tokens)))
	nt := len(batch) * s.MaxBlocks
	if cap(s.BlockTables) < nt {
		s.BlockTables = make([]int32, nt, nt+nt/4)
	}
	s.BlockTables = s.BlockTables[:nt]
	clear(s.BlockTables)
	for i := range batch {
		in := &batch[i]
		if len(in.Tokens) == 0 {
			continue
		}
		need := (in.Pos + len(in.Tokens) + blockSize - 1) / blockSize
		copy(s.BlockTables[i*s.MaxBlocks:], in.Blocks[:need])
	}
	return nil
}

// checkSeq reports whether batch entry i is consistent with the model and the cache.
func checkSeq(i int, s *SeqInput, vocab, numBlocks, blockSize int) error {
	if s.Pos < 0 {
		return fmt.Errorf("model: Forward: sequence %d: negative position %d", i, s.Pos)
	}
	if len(s.Tokens) == 0 {
		if s.Logits {
			return fmt.Errorf("model: Forward: sequence %d asks for logits but has no tokens", i)
		}
		return nil
	}
	for _, tok := range s.Tokens {
		if tok < 0 || int(tok) >= vocab {
			return fmt.Errorf("model: Forward: sequence %d: token %d outside the vocabulary [0, %d)", i, tok, vocab)
		}
	}
	end := s.Pos + len(s.Tokens)
	need := (end + blockSize - 1) / blockSize
	if len(s.Blocks) < need {
		return fmt.Errorf("model: Forward: sequence %d: %d blocks of %d tokens cannot hold positions [0, %d)", i, len(s.Blocks), blockSize, end)
	}
	for _, b := range s.Blocks[:need] {
		if b < 0 || int(b) >= numBlocks {
			return fmt.Errorf("model: Forward: sequence %d: block %d outside the cache's %d blocks", i, b, numBlocks)
		}
	}
	return nil
}
