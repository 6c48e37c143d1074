package modelfile

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"

	"servelab/engine/safetensors"
)

// llama2.c's newer export formats (export.py --version 1/2) start with this magic; run.c reads
// only the legacy headerless-magic format.
const llama2cMagic = 0x616b3432 // "ak42"

// ReadLlama2C reads a checkpoint in the legacy format karpathy/llama2.c's run.c reads: seven
// little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
// a negative vocab_size means an untied classifier follows), then float32 arrays:
// token_embedding[vocab*dim], rms_att[L*dim], wq[L*dim*dim], wk[L*dim*kv_dim],
// wv[L*dim*kv_dim], wo[L*dim*dim], rms_ffn[L*dim], w1[L*hidden*dim], w2[L*dim*hidden],
// w3[L*hidden*dim], rms_final[dim], freq_cis_real[seq_len*head_size/2], freq_cis_imag[same]
// (skipped), and wcls[vocab*dim] when untied.
//
// The weights come back exactly as stored, in llama2.c's adjacent-pair RoPE convention: pass
// them through [PermuteQKToHF] before [Write] (as [ConvertLlama2C] does). llama2.c has no
// config: the spec gets rope theta 10000, rms eps 1e-5, BOS 1 and EOS 2 (the SentencePiece
// Llama 2 ids), dtype F32. Note that run.c itself never stops on EOS: it stops generating when
// it samples BOS (1) again; the HF files declare eos_token_id [2] as Llama 2 does.
func ReadLlama2C(path string) (Spec, *Weights, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Spec{}, nil, fmt.Errorf("modelfile: %w", err)
	}
	const headerBytes = 7 * 4
	if len(data) < headerBytes {
		return Spec{}, nil, fmt.Errorf("modelfile: %s: %d bytes, too short for the 28-byte llama2.c header", path, len(data))
	}
	if binary.LittleEndian.Uint32(data) == llama2cMagic {
		return Spec{}, nil, fmt.Errorf("modelfile: %s: llama2.c export format version %d (magic \"ak42\") is not supported; only the legacy run.c format (export.py --version 0)", path, binary.LittleEndian.Uint32(data[4:]))
	}
	var h [7]int
	for i := range h {
		h[i] = int(int32(binary.LittleEndian.Uint32(data[4*i:])))
	}
	dim, hidden, layers, heads, kvHeads, vocab, seqLen := h[0], h[1], h[2], h[3], h[4], h[5], h[6]
	tied := vocab > 0
	if vocab < 0 {
		vocab = -vocab
	}
	spec := Spec{
		Dim: dim, Hidden: hidden, Layers: layers, Heads: heads, KVHeads: kvHeads, Vocab: vocab,
		MaxSeqLen: seqLen, RopeTheta: 10000, NormEps: 1e-5, Tied: tied, BOS: 1, EOS: 2,
		DType: safetensors.F32,
	}
	if err := spec.Validate(); err != nil {
		return Spec{}, nil, fmt.Errorf("%w (llama2.c header of %s: dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d)",
			err, path, h[0], h[1], h[2], h[3], h[4], h[5], h[6])
	}
	kvDim := spec.KVDim()
	hs := spec.HeadDim()
	last := "freq_cis_imag"
	if !tied {
		last = "wcls"
	}
	layout := func(r *reader, w *Weights) {
		w.Embed = r.take("token_embedding", vocab, dim)
		r.split("rms_att", w.AttnNorm, layers, dim)
		r.split("wq", w.Wq, layers, dim, dim)
		r.split("wk", w.Wk, layers, kvDim, dim)
		r.split("wv", w.Wv, layers, kvDim, dim)
		r.split("wo", w.Wo, layers, dim, dim)
		r.split("rms_ffn", w.FFNNorm, layers, dim)
		r.split("w1", w.W1, layers, hidden, dim)
		r.split("w2", w.W2, layers, dim, hidden)
		r.split("w3", w.W3, layers, hidden, dim)
		w.FinalNorm = r.take("rms_final", dim)
		r.skip("freq_cis_real", seqLen, hs/2)
		r.skip("freq_cis_imag", seqLen, hs/2)
		if !tied {
			w.LMHead = r.take("wcls", vocab, dim)
		}
	}
	// A dry pass checks the sizes against the file before anything is allocated.
	dry := &reader{path: path, data: data, off: headerBytes, dry: true}
	layout(dry, &Weights{})
	if dry.err != nil {
		return Spec{}, nil, dry.err
	}
	if rest := len(data) - dry.off; rest != 0 {
		hint := ""
		if tied && rest == 4*vocab*dim {
			hint = "; that is exactly an untied classifier wcls[vocab*dim], but vocab_size is positive (tied)"
		}
		return Spec{}, nil, fmt.Errorf("modelfile: %s: %d trailing bytes after the last field %s (file is %d bytes, the header's shapes account for %d)%s",
			path, rest, last, len(data), dry.off, hint)
	}
	w := newWeights(layers)
	r := &reader{path: path, data: data, off: headerBytes}
	layout(r, w)
	if r.err != nil {
		return Spec{}, nil, r.err
	}
	return spec, w, nil
}

// reader walks the float32 fields of a llama2.c checkpoint, remembering the first error.
type reader struct {
	path string
	data []byte
	off  int
	err  error
	dry  bool // only advance and check sizes; take returns nil
}

// size is the product of dims, or -1 when it exceeds what a file could hold.
func size(dims ...int) int {
	const limit = math.MaxInt / 8 // keeps 4*n from overflowing
	n := 1
	for _, d := range dims {
		if d < 0 || (d != 0 && n > limit/d) {
			return -1
		}
		n *= d
	}
	return n
}

func (r *reader) need(field string, n int) bool {
	if r.err != nil {
		return false
	}
	if n < 0 {
		r.err = fmt.Errorf("modelfile: %s: field %s is too large for any file (header shapes overflow)", r.path, field)
		return false
	}
	if rest := len(r.data) - r.off; 4*n > rest {
		r.err = fmt.Errorf("modelfile: %s: truncated: field %s needs %d floats (%d bytes) at offset %d, but only %d bytes remain",
			r.path, field, n, 4*n, r.off, rest)
		return false
	}
	return true
}

func (r *reader) take(field string, dims ...int) []float32 {
	n := size(dims...)
	if !r.need(field, n) {
		return nil
	}
	if r.dry {
		r.off += 4 * n
		return nil
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(r.data[r.off+4*i:]))
	}
	r.off += 4 * n
	return out
}

// split reads layers consecutive per-layer arrays of size(dims) floats each into dst.
func (r *reader) split(field string, dst [][]float32, layers int, dims ...int) {
	n := size(dims...)
	all := r.take(field, append([]int{layers}, dims...)...)
	if all == nil {
		return
	}
	for i := range dst {
		dst[i] = all[i*n : (i+1)*n : (i+1)*n]
	}
}

func (r *reader) skip(field string, dims ...int) {
	n := size(dims...)
	if r.need(field, n) {
		r.off += 4 * n
	}
}

// ConvertLlama2C converts a llama2.c checkpoint (see [ReadLlama2C]) into a Hugging Face Llama
// directory at outDir: wq and wk rows permuted for rotate-half RoPE, everything else copied
// exactly, F32.
func ConvertLlama2C(path, outDir string) error {
	spec, w, err := ReadLlama2C(path)
	if err != nil {
		return err
	}
	return Write(outDir, spec, PermuteQKToHF(spec, w))
}

// PermuteRotaryRows reorders the rows of a [heads*headDim, cols] row-major matrix from the
// adjacent-pair RoPE layout to the rotate-half layout, as transformers'
// convert_llama_weights_to_hf does: within each head, new row j < headDim/2 is old row 2j and
// new row headDim/2+j is old row 2j+1. It returns a new slice.
func PermuteRotaryRows(w []float32, heads, headDim, cols int) []float32 {
	return permuteRows(w, heads, headDim, cols, false)
}

// UnpermuteRotaryRows is the inverse of [PermuteRotaryRows].
func UnpermuteRotaryRows(w []float32, heads, headDim, cols int) []float32 {
	return permuteRows(w, heads, headDim, cols, true)
}

func permuteRows(w []float32, heads, headDim, cols int, inverse bool) []float32 {
	if len(w) != heads*headDim*cols || headDim%2 != 0 {
		panic(fmt.Sprintf("modelfile: permuting a %d-value matrix as %d heads x %d rows x %d cols", len(w), heads, headDim, cols))
	}
	out := make([]float32, len(w))
	half := headDim / 2
	for h := 0; h < heads; h++ {
		base := h * headDim
		for j := 0; j < headDim; j++ {
			// new row j (rotate-half) <- old row src (adjacent pairs)
			src := 2 * j
			if j >= half {
				src = 2*(j-half) + 1
			}
			to, from := base+j, base+src
			if inverse {
				to, from = from, to
			}
			copy(out[to*cols:(to+1)*cols], w[from*cols:(from+1)*cols])
		}
	}
	return out
}

// PermuteQKToHF returns weights in the Hugging Face rotate-half convention from weights in the
// adjacent-pair (llama2.c / Meta) convention: every layer's Wq (Heads heads) and Wk (KVHeads
// heads) rows permuted by [PermuteRotaryRows]; Wv and all other tensors are shared, not copied.
func PermuteQKToHF(spec Spec, w *Weights) *Weights {
	return permuteQK(spec, w, false)
}

// PermuteQKFromHF is the inverse of [PermuteQKToHF]: weights for an adjacent-pair RoPE engine.
func PermuteQKFromHF(spec Spec, w *Weights) *Weights {
	return permuteQK(spec, w, true)
}

func permuteQK(spec Spec, w *Weights, inverse bool) *Weights {
	out := *w
	out.Wq = make([][]float32, len(w.Wq))
	out.Wk = make([][]float32, len(w.Wk))
	hd := spec.HeadDim()
	for l := range w.Wq {
		out.Wq[l] = permuteRows(w.Wq[l], spec.Heads, hd, spec.Dim, inverse)
	}
	for l := range w.Wk {
		out.Wk[l] = permuteRows(w.Wk[l], spec.KVHeads, hd, spec.Dim, inverse)
	}
	return &out
}

// WriteLlama2C writes weights in HF order (as [Write] takes them) as a legacy llama2.c
// checkpoint, q/k rows permuted back to adjacent-pair RoPE, so llama2.c's run.c computes the
// same model: the peer the engine's benchmarks are measured against. freq_cis tables are
// written as zeros (run.c skips them).
func WriteLlama2C(path string, spec Spec, w *Weights) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if err := w.Check(spec); err != nil {
		return err
	}
	if spec.RopeScaling != nil {
		return fmt.Errorf("modelfile: a llama2.c checkpoint has no rope_scaling (the spec has Llama 3.1's)")
	}
	w = PermuteQKFromHF(spec, w)
	vocab := spec.Vocab
	if !spec.Tied {
		vocab = -vocab
	}
	var buf []byte
	for _, v := range []int{spec.Dim, spec.Hidden, spec.Layers, spec.Heads, spec.KVHeads, vocab, spec.MaxSeqLen} {
		buf = binary.LittleEndian.AppendUint32(buf, uint32(int32(v)))
	}
	put := func(vs ...[]float32) {
		for _, v := range vs {
			for _, x := range v {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(x))
			}
		}
	}
	put(w.Embed)
	for _, field := range [][][]float32{w.AttnNorm, w.Wq, w.Wk, w.Wv, w.Wo, w.FFNNorm, w.W1, w.W2, w.W3} {
		put(field...)
	}
	put(w.FinalNorm)
	put(make([]float32, spec.MaxSeqLen*spec.HeadDim()/2*2))
	if !spec.Tied {
		put(w.LMHead)
	}
	return os.WriteFile(path, buf, 0o644)
}
