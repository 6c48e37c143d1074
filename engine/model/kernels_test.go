package model

// Reference tests of the forward pass's kernels that live in this package, the CPU
// reference for the CUDA kernels of the same names (cuda/kernels): the embedding lookup,
// the rope table (with Llama 3.1 and linear scaling), rope-and-store (ropeRows: rotary
// embedding of queries and keys, the attention scale folded into the queries, keys and
// values stored into the paged cache through the block table) and paged attention
// (attend) for decode and prefill chunks, each against a float64 reference written
// plainly here that reads keys and values from contiguous per-sequence arrays. The
// element-wise kernels' tolerances are in engine/cpu/reference_test.go.
//
//	kernel                      bound on |got - want|                             measured
//	embedding (f32, bf16, f16)  exact: rows of the table, converted exactly      exact
//	rope table cos/sin          2^-24 (one float32 rounding of |v| <= 1)          0.5
//	rope-and-store, queries     2^-21·(|q_i| + |q_i+h|)/sqrt(headDim)             0.37
//	rope-and-store, keys        2^-21·(|k_i| + |k_i+h|); values stored exactly     0.37
//	paged attention             1e-5·max(1, Σ_j p_j·|v_j|) per output element,    0.11
//	                              p the float64 softmax of the scores
//
// The attention bound is the f32 dot-product bound (engine/cpu) carried through softmax
// (a score error e changes a probability by a factor e^e) with room for the float32 sums
// over up to a few hundred positions; "measured" is the largest error seen as a
// fraction of the bound (go test -run Kernel -v logs it).

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"servelab/engine/cpu"
	"servelab/engine/safetensors"
)

// TestKernelEmbedding: the embedding the forward pass copies rows from is the file's
// table converted exactly (bf16 and f16 values are exact in float32).
func TestKernelEmbedding(t *testing.T) {
	for _, dt := range []safetensors.DType{safetensors.F32, safetensors.BF16, safetensors.F16} {
		t.Run(string(dt), func(t *testing.T) {
			a := testArchs[0]
			a.dtype = dt
			rm := newRefModel(a, 5)
			m := rm.load(t)
			want := rm.w["model.embed_tokens.weight"]
			if len(m.embed) != len(want) {
				t.Fatalf("embedding of %d values, want %d", len(m.embed), len(want))
			}
			for i, v := range want {
				if float64(m.embed[i]) != v {
					t.Fatalf("embedding [%d][%d] = %v, want %v", i/a.dim, i%a.dim, m.embed[i], v)
				}
			}
		})
	}
}

// ropeConfigs are rope settings of real models: Llama 3.1 (theta 500000, llama3 scaling),
// Llama 2 (theta 10000), a linear-scaled model and a small head.
var ropeConfigs = []struct {
	name    string
	hd      int
	theta   float64
	scaling map[string]any
}{
	{"llama3.1", 128, 500000, map[string]any{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
	{"llama2", 128, 10000, nil},
	{"linear", 64, 10000, map[string]any{"rope_type": "linear", "factor": 4.0}},
	{"small-llama3", 16, 10000, map[string]any{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
}

// ropeModel returns a refModel whose only use is refInvFreq, and the Config with the same
// rope settings.
func ropeModel(hd int, theta float64, scaling map[string]any) (*refModel, Config) {
	rm := &refModel{a: testArch{headDim: hd, heads: 1, theta: theta, scaling: scaling}}
	c := Config{HeadDim: hd, RopeTheta: theta}
	if scaling != nil {
		c.RopeScaling.Type = scaling["rope_type"].(string)
		c.RopeScaling.Factor = scaling["factor"].(float64)
		if c.RopeScaling.Type == "llama3" {
			c.RopeScaling.LowFreqFactor = scaling["low_freq_factor"].(float64)
			c.RopeScaling.HighFreqFactor = scaling["high_freq_factor"].(float64)
			c.RopeScaling.OriginalMaxPos = scaling["original_max_position_embeddings"].(int)
		}
	}
	return rm, c
}

// refAngle is the rotation angle of pair i at position p in the reference.
func refAngle(rm *refModel, inv []float64, p, i int) float64 {
	posScale := 1.0
	if rm.a.scaling != nil && rm.a.scaling["rope_type"] == "linear" {
		posScale = 1 / rm.a.scaling["factor"].(float64)
	}
	return float64(p) * posScale * inv[i]
}

// TestKernelRopeTable: the cos and sin tables the rope kernels read are the float32
// roundings of the float64 angles, Llama 3.1 scaling included, up to past the original
// context.
func TestKernelRopeTable(t *testing.T) {
	for _, rc := range ropeConfigs {
		t.Run(rc.name, func(t *testing.T) {
			rm, c := ropeModel(rc.hd, rc.theta, rc.scaling)
			inv := rm.refInvFreq()
			const n = 8300 // past Llama 3.1's original context, 8192
			tab := newRopeTable(invFreq(c), n)
			var me float64
			for p := range n {
				cos, sin := tab.row(p)
				for i := range rc.hd / 2 {
					a := refAngle(rm, inv, p, i)
					dc, ds := math.Abs(float64(cos[i])-math.Cos(a)), math.Abs(float64(sin[i])-math.Sin(a))
					me = max(me, dc/0x1p-24, ds/0x1p-24)
					if dc > 0x1p-24 || ds > 0x1p-24 {
						t.Fatalf("position %d pair %d: cos, sin = %v, %v, want %v, %v", p, i, cos[i], sin[i], math.Cos(a), math.Sin(a))
					}
				}
			}
			t.Logf("largest error %.3g of the bound", me)
		})
	}
}

// pagedSeq is one sequence of a paged-attention case: the cache already holds positions
// [0, pos) (for a sequence with shareOf >= 0, its first share positions are sequence
// shareOf's, in the same blocks), and the step computes n tokens.
type pagedSeq struct {
	pos, n  int
	shareOf int // -1: none
	share   int // positions shared, a multiple of the block size
}

var pagedCases = []struct {
	name string
	seqs []pagedSeq
}{
	{"decode", []pagedSeq{{0, 1, -1, 0}, {15, 1, -1, 0}, {16, 1, -1, 0}, {17, 1, -1, 0}, {130, 1, -1, 0}}},
	{"decode sharing a prefix", []pagedSeq{{70, 1, -1, 0}, {48, 1, 0, 32}, {32, 1, 0, 32}, {90, 1, 1, 48}}},
	{"prefill from zero", []pagedSeq{{0, 37, -1, 0}}},
	{"prefill chunks", []pagedSeq{{16, 16, -1, 0}, {5, 23, -1, 0}, {64, 1, -1, 0}, {100, 20, -1, 0}}},
	{"prefill after a prefix hit", []pagedSeq{{80, 1, -1, 0}, {32, 29, 0, 32}, {64, 3, 0, 64}}},
}

// TestKernelPagedAttention runs rope-and-store and paged attention, as a step of Forward
// runs them, over block tables drawn from a shuffled free list (non-contiguous,
// interleaved between sequences, prefix blocks shared), for block sizes 16 and 1,
// grouped-query attention with 4 query heads per KV head, head dims 64 and 128 and Llama
// 3.1 rope, and checks the queries, the cache contents and the attention output against
// float64 references over contiguous keys and values.
func TestKernelPagedAttention(t *testing.T) {
	rc := ropeConfigs[0]
	for _, hd := range []int{64, 128} {
		for _, bs := range []int{16, 1} {
			if hd == 64 && bs == 1 {
				continue // the head dim does not change how blocks are read
			}
			for ci, pc := range pagedCases {
				t.Run(fmt.Sprintf("hd=%d/bs=%d/%s", hd, bs, pc.name), func(t *testing.T) {
					rm, c := ropeModel(hd, rc.theta, rc.scaling)
					c.Heads, c.KVHeads, c.Layers = 8, 2, 1
					c.Dim, c.Hidden, c.Vocab = c.QDim(), 1, 1
					checkPaged(t, rm, c, bs, pc.seqs, uint64(100*hd+10*bs+ci))
				})
			}
		}
	}
}

func checkPaged(t *testing.T, rm *refModel, c Config, bs int, seqs []pagedSeq, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	hd, H, KV := c.HeadDim, c.Heads, c.KVHeads
	qd, kvd := c.QDim(), c.KVDim()
	width := qd + 2*kvd
	m := &Model{Config: c, pool: cpu.NewPool(2), layers: make([]layer, 1), invFreq: invFreq(c)}
	m.rope.Store(newRopeTable(m.invFreq, 8)) // grown by the step
	// Twice the blocks the sequences need, so that the shuffled free list scatters them.
	numBlocks := 8
	for _, s := range seqs {
		numBlocks += 2 * ((s.pos + s.n + bs - 1) / bs)
	}
	cache := m.NewKVCache(numBlocks, bs)
	poisonCache(cache)
	r := m.NewRunner(cache)

	free := make([]int32, numBlocks)
	for i := range free {
		free[i] = int32(i)
	}
	rng.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	// Per sequence: its block table and its keys and values at every position,
	// contiguous (float64 for the reference; the stored ones are float32).
	tables := make([][]int32, len(seqs))
	keys := make([][][]float64, len(seqs))
	vals := make([][][]float64, len(seqs))
	written := map[int]bool{} // cache slots written, by offset
	store := func(blocks []int32, p int, k, v []float32) {
		off := (int(blocks[p/bs])*bs + p%bs) * kvd
		copy(cache.k[0][off:off+kvd], k)
		copy(cache.v[0][off:off+kvd], v)
		written[off] = true
	}
	for i, s := range seqs {
		end := s.pos + s.n
		if s.shareOf >= 0 {
			tables[i] = slices.Clone(tables[s.shareOf][:s.share/bs])
			keys[i] = slices.Clone(keys[s.shareOf][:s.share])
			vals[i] = slices.Clone(vals[s.shareOf][:s.share])
		}
		for len(tables[i])*bs < end {
			tables[i] = append(tables[i], free[0])
			free = free[1:]
		}
		// Keys and values of the positions already computed (keys after rope).
		for p := len(keys[i]); p < s.pos; p++ {
			k, v := randSlice32(rng, kvd), randSlice32(rng, kvd)
			store(tables[i], p, k, v)
			keys[i] = append(keys[i], to64(k))
			vals[i] = append(vals[i], to64(v))
		}
	}

	// The step: q, k, v rows of the new tokens before rope.
	batch := make([]SeqInput, len(seqs))
	for i, s := range seqs {
		batch[i] = SeqInput{Tokens: make([]int32, s.n), Pos: s.pos, Blocks: tables[i]}
	}
	k := prepareStep(t, r, batch)
	T := r.step.T()
	in := make([]float32, T*width)
	for i := range in {
		in[i] = float32(rng.NormFloat64())
		if i%width < qd {
			in[i] *= 3 // scores of sd 3: attention far from uniform
		}
	}
	copy(k.qkv, in)
	if err := k.RopeStore(0); err != nil {
		t.Fatal(err)
	}
	if err := k.Attention(0); err != nil {
		t.Fatal(err)
	}

	inv := rm.refInvFreq()
	scale := 1 / math.Sqrt(float64(hd))
	rotate := func(v []float32, p int) []float64 { // rotate-half, one head, float64
		out := to64(v)
		h := hd / 2
		for i := range h {
			a := refAngle(rm, inv, p, i)
			x0, x1 := out[i], out[i+h]
			out[i] = x0*math.Cos(a) - x1*math.Sin(a)
			out[i+h] = x1*math.Cos(a) + x0*math.Sin(a)
		}
		return out
	}
	var ropeErr, attnErr float64
	checkRot := func(what string, got []float32, src []float32, want []float64, f float64) {
		t.Helper()
		h := hd / 2
		for i := range hd {
			j := i % h
			bound := 0x1p-21 * (math.Abs(float64(src[j])) + math.Abs(float64(src[j+h]))) * f
			d := math.Abs(float64(got[i]) - want[i]*f)
			ropeErr = max(ropeErr, d/bound)
			if !(d <= bound) {
				t.Fatalf("%s [%d] = %v, want %v", what, i, got[i], want[i]*f)
			}
		}
	}
	// Queries (rotated and scaled in place), keys and values (in the cache at the slot
	// the block table names).
	queries := make([][]float64, T) // [row][H*hd], the reference's scaled queries
	for i, s := range seqs {
		for j := range s.n {
			t0 := int(r.step.SeqStart[i]) + j
			p := s.pos + j
			row := in[t0*width : (t0+1)*width]
			queries[t0] = make([]float64, qd)
			for h := range H {
				src := row[h*hd : (h+1)*hd]
				want := rotate(src, p)
				checkRot(fmt.Sprintf("seq %d position %d query head %d", i, p, h), k.qkv[t0*width+h*hd:][:hd], src, want, scale)
				for k := range hd {
					queries[t0][h*hd+k] = want[k] * scale
				}
			}
			off := (int(tables[i][p/bs])*bs + p%bs) * kvd
			written[off] = true
			kRef := make([]float64, kvd)
			for h := range KV {
				src := row[qd+h*hd : qd+(h+1)*hd]
				want := rotate(src, p)
				checkRot(fmt.Sprintf("seq %d position %d key head %d in the cache", i, p, h), cache.k[0][off+h*hd:][:hd], src, want, 1)
				copy(kRef[h*hd:], want)
			}
			v := row[qd+kvd : width]
			if got := cache.v[0][off : off+kvd]; !slices.Equal(got, v) {
				t.Fatalf("seq %d position %d: values in the cache %v, want %v", i, p, got[:4], v[:4])
			}
			keys[i] = append(keys[i], kRef)
			vals[i] = append(vals[i], to64(v))
		}
	}
	// Nothing else in the cache was written.
	for off := 0; off < len(cache.k[0]); off += kvd {
		if !written[off] && (!math.IsNaN(float64(cache.k[0][off])) || !math.IsNaN(float64(cache.v[0][off]))) {
			t.Fatalf("cache slot %d written, no position of any sequence lives there", off/kvd)
		}
	}
	// Attention: causal over the sequence's positions [0, p], contiguous keys and values.
	for i, s := range seqs {
		for j := range s.n {
			t0 := int(r.step.SeqStart[i]) + j
			p := s.pos + j
			for h := range H {
				kvh := h / (H / KV)
				q := queries[t0][h*hd : (h+1)*hd]
				sc := make([]float64, p+1)
				mx := math.Inf(-1)
				for pos := range sc {
					for k := range hd {
						sc[pos] += q[k] * keys[i][pos][kvh*hd+k]
					}
					mx = max(mx, sc[pos])
				}
				var sum float64
				for pos := range sc {
					sc[pos] = math.Exp(sc[pos] - mx)
					sum += sc[pos]
				}
				got := k.att[t0*qd+h*hd:][:hd]
				for k := range hd {
					var want, mag float64
					for pos := range sc {
						w := sc[pos] / sum * vals[i][pos][kvh*hd+k]
						want += w
						mag += math.Abs(w)
					}
					bound := 1e-5 * max(1, mag)
					d := math.Abs(float64(got[k]) - want)
					attnErr = max(attnErr, d/bound)
					if !(d <= bound) {
						t.Fatalf("seq %d position %d head %d: out[%d] = %v, want %v", i, p, h, k, got[k], want)
					}
				}
			}
		}
	}
	t.Logf("largest errors, as fractions of the bounds: rope %.3g, attention %.3g", ropeErr, attnErr)
}

// prepareStep lays out batch and sets the runner's CPU kernels up as Forward does before
// its first layer, and returns the kernels.
func prepareStep(t *testing.T, r *Runner, batch []SeqInput) *cpuKernels {
	t.Helper()
	if err := r.step.Build(batch, &r.k.m.Config, r.k.c.numBlocks, r.k.c.blockSize); err != nil {
		t.Fatal(err)
	}
	if err := r.k.Begin(&r.step); err != nil {
		t.Fatal(err)
	}
	return &r.k
}

func randSlice32(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

func to64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}
