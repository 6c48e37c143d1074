package modelfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"servelab/engine/safetensors"
)

// DefaultMaxShardSize is transformers' save_pretrained default max_shard_size, "5GB"
// (decimal, as huggingface_hub parses it).
const DefaultMaxShardSize = 5_000_000_000

// RandomOptions tune WriteRandom.
type RandomOptions struct {
	// MaxShardSize is the largest shard in bytes; 0 means DefaultMaxShardSize. A model
	// that fits in one shard is written as model.safetensors alone.
	MaxShardSize int64
	// Workers generate a tensor's values in parallel; 0 means GOMAXPROCS. The values do not
	// depend on it.
	Workers int
	// Progress, if set, is called after each tensor with the bytes written so far and the
	// model's total.
	Progress func(written, total int64)
}

// WriteStats say what WriteRandom wrote.
type WriteStats struct {
	// Files are the weight files' names in the directory: model.safetensors, or the shards.
	Files []string
	// Bytes is the tensors' data in bytes (the index's metadata.total_size).
	Bytes int64
	// Params is the number of parameters written.
	Params int64
}

// randomChunk is the number of elements one random stream fills: chunk c of the tensor at
// index t of the state dict is drawn from PCG(seed, t<<40 | c), so the values depend only
// on the seed, whichever worker draws them.
const randomChunk = 1 << 16

// stateDict lists spec's tensors in the order LlamaForCausalLM's state_dict() gives them
// (the order save_pretrained fills its shards in): the embedding, then per layer the
// attention's q, k, v, o, the MLP's gate, up, down and the two norms, then the final norm
// and, untied, lm_head.
func stateDict(spec Spec) []safetensors.TensorInfo {
	d, hd, dt := spec.Dim, spec.HeadDim(), spec.dtype()
	ti := func(name string, shape ...int) safetensors.TensorInfo {
		return safetensors.TensorInfo{Name: name, DType: dt, Shape: shape}
	}
	out := []safetensors.TensorInfo{ti("model.embed_tokens.weight", spec.Vocab, d)}
	for i := 0; i < spec.Layers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		out = append(out,
			ti(p+"self_attn.q_proj.weight", spec.Heads*hd, d),
			ti(p+"self_attn.k_proj.weight", spec.KVHeads*hd, d),
			ti(p+"self_attn.v_proj.weight", spec.KVHeads*hd, d),
			ti(p+"self_attn.o_proj.weight", d, spec.Heads*hd),
			ti(p+"mlp.gate_proj.weight", spec.Hidden, d),
			ti(p+"mlp.up_proj.weight", spec.Hidden, d),
			ti(p+"mlp.down_proj.weight", d, spec.Hidden),
			ti(p+"input_layernorm.weight", d),
			ti(p+"post_attention_layernorm.weight", d),
		)
	}
	out = append(out, ti("model.norm.weight", d))
	if !spec.Tied {
		out = append(out, ti("lm_head.weight", spec.Vocab, d))
	}
	return out
}

// shardPlan splits the state dict into shards as huggingface_hub's
// split_torch_state_dict_into_shards does: in order, a tensor that would take the current
// shard past max starts a new one (a tensor larger than max gets a shard of its own).
func shardPlan(tensors []safetensors.TensorInfo, max int64) [][]int {
	var shards [][]int
	var size int64
	for i, t := range tensors {
		n, _ := t.ByteSize()
		if len(shards) == 0 || (size+int64(n) > max && size > 0) {
			shards = append(shards, nil)
			size = 0
		}
		shards[len(shards)-1] = append(shards[len(shards)-1], i)
		size += int64(n)
	}
	return shards
}

// shardIndex is model.safetensors.index.json as transformers writes it (json.dumps with
// indent 2 and sorted keys).
type shardIndex struct {
	Metadata  shardIndexMetadata `json:"metadata"`
	WeightMap map[string]string  `json:"weight_map"`
}

type shardIndexMetadata struct {
	TotalSize int64 `json:"total_size"`
}

// WriteRandom writes a random-weight model of spec to dir as save_pretrained would lay it
// out: config.json, generation_config.json, and the weights in spec.DType as
// model.safetensors or, past opts.MaxShardSize, as shards model-0000i-of-0000n.safetensors
// with model.safetensors.index.json. Weight files of an earlier model in dir are removed
// first (the loader prefers model.safetensors to an index).
//
// The weights are initialised as transformers initialises a Llama (matrices N(0, InitStd²),
// norms 1), as RandomWeights does but with other random streams (see randomChunk), so a
// model of any size is written tensor by tensor: memory holds one tensor in spec.DType,
// never the model, nor a tensor in float32 unless that is its dtype. The same spec and seed
// give the same files.
func WriteRandom(dir string, spec Spec, seed uint64, opts RandomOptions) (WriteStats, error) {
	if err := spec.Validate(); err != nil {
		return WriteStats{}, err
	}
	if err := spec.checkSizes(); err != nil {
		return WriteStats{}, err
	}
	maxShard := opts.MaxShardSize
	if maxShard <= 0 {
		maxShard = DefaultMaxShardSize
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	cfg, err := ConfigJSON(spec)
	if err != nil {
		return WriteStats{}, err
	}
	gen, err := GenerationConfigJSON(spec)
	if err != nil {
		return WriteStats{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return WriteStats{}, fmt.Errorf("modelfile: %w", err)
	}
	if err := removeWeights(dir); err != nil {
		return WriteStats{}, err
	}
	all := stateDict(spec)
	var st WriteStats
	var largest int
	for _, t := range all {
		n, ok := t.ByteSize()
		if !ok {
			return WriteStats{}, fmt.Errorf("modelfile: tensor %s: shape %v has no size", t.Name, t.Shape)
		}
		st.Bytes += int64(n)
		largest = max(largest, n)
		ne := 1
		for _, d := range t.Shape {
			ne *= d
		}
		st.Params += int64(ne)
	}
	buf := make([]byte, largest)
	var written int64
	shards := shardPlan(all, maxShard)
	weightMap := map[string]string{}
	for s, idx := range shards {
		name := safetensors.SingleFileName
		if len(shards) > 1 {
			name = fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, len(shards))
		}
		infos := make([]safetensors.TensorInfo, len(idx))
		for j, i := range idx {
			infos[j] = all[i]
			weightMap[all[i].Name] = name
		}
		err := safetensors.WriteStream(filepath.Join(dir, name), infos, map[string]string{"format": "pt"}, func(j int) ([]byte, error) {
			t := infos[j]
			n, _ := t.ByteSize()
			out := buf[:n]
			fillRandom(out, t, uint64(idx[j]), seed, workers)
			written += int64(n)
			if opts.Progress != nil {
				opts.Progress(written, st.Bytes)
			}
			return out, nil
		})
		if err != nil {
			return WriteStats{}, err
		}
		st.Files = append(st.Files, name)
	}
	if len(shards) > 1 {
		idx, err := marshalIndent(shardIndex{Metadata: shardIndexMetadata{TotalSize: st.Bytes}, WeightMap: weightMap})
		if err != nil {
			return WriteStats{}, err
		}
		if err := os.WriteFile(filepath.Join(dir, safetensors.IndexFileName), idx, 0o644); err != nil {
			return WriteStats{}, fmt.Errorf("modelfile: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), cfg, 0o644); err != nil {
		return WriteStats{}, fmt.Errorf("modelfile: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, GenerationConfigFile), gen, 0o644); err != nil {
		return WriteStats{}, fmt.Errorf("modelfile: %w", err)
	}
	return st, nil
}

// removeWeights deletes the weight files of a Hugging Face directory: model.safetensors,
// the index and its shards (model-*-of-*.safetensors).
func removeWeights(dir string) error {
	shards, err := filepath.Glob(filepath.Join(dir, "model-*-of-*.safetensors"))
	if err != nil {
		return fmt.Errorf("modelfile: %w", err)
	}
	for _, p := range append(shards, filepath.Join(dir, safetensors.SingleFileName), filepath.Join(dir, safetensors.IndexFileName)) {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("modelfile: %w", err)
		}
	}
	return nil
}

// fillRandom writes tensor t's values into out in t.DType: ones for a norm (a vector),
// N(0, InitStd²) otherwise, chunk c from PCG(seed, index<<40 | c), chunks shared among
// workers.
func fillRandom(out []byte, t safetensors.TensorInfo, index, seed uint64, workers int) {
	elems := 1
	for _, d := range t.Shape {
		elems *= d
	}
	size := t.DType.Bits() / 8
	put := encoder(t.DType)
	if len(t.Shape) == 1 {
		for i := range elems {
			put(out[i*size:], 1)
		}
		return
	}
	chunks := (elems + randomChunk - 1) / randomChunk
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, chunks) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c := int(next.Add(1) - 1)
				if c >= chunks {
					return
				}
				rng := rand.New(rand.NewPCG(seed, index<<40|uint64(c)))
				for i := c * randomChunk; i < min(elems, (c+1)*randomChunk); i++ {
					put(out[i*size:], float32(rng.NormFloat64()*InitStd))
				}
			}
		}()
	}
	wg.Wait()
}

// encoder returns a function storing a float32 at the start of a buffer in dtype d (F32,
// F16 or BF16, which Spec.Validate allows).
func encoder(d safetensors.DType) func([]byte, float32) {
	switch d {
	case safetensors.BF16:
		return func(b []byte, v float32) { binary.LittleEndian.PutUint16(b, safetensors.Float32ToBF16(v)) }
	case safetensors.F16:
		return func(b []byte, v float32) { binary.LittleEndian.PutUint16(b, safetensors.Float32ToF16(v)) }
	default:
		return func(b []byte, v float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(v)) }
	}
}

// MaxTensorBytes and MaxModelBytes bound what a Spec may describe before anything is
// allocated or written: synthesis holds one tensor in memory, and a config.json with
// hostile sizes (a vocabulary of 2e9 and a hidden size of 4M) made it panic in makeslice.
// The largest real models are far below both (Llama-3.1-405B: 4.2 GB for its largest
// bfloat16 tensor, 810 GB in all).
const (
	MaxTensorBytes = 16 << 30
	MaxModelBytes  = 2 << 40
)

// checkSizes refuses a valid spec whose tensors' sizes overflow or exceed the bounds
// above. Every layer has the same tensors, so it looks at one layer's and multiplies,
// rather than listing Layers of them (a header claiming 2^30 layers).
func (s Spec) checkSizes() error {
	one := s
	one.Layers = 1
	var layer, rest int64
	for _, t := range stateDict(one) {
		n, ok := t.ByteSize()
		if !ok || n > MaxTensorBytes {
			return fmt.Errorf("modelfile: spec tensor %s of shape %v is larger than %d GiB", t.Name, t.Shape, MaxTensorBytes>>30)
		}
		if strings.HasPrefix(t.Name, "model.layers.0.") {
			layer += int64(n)
		} else {
			rest += int64(n)
		}
	}
	if layer > (MaxModelBytes-rest)/int64(s.Layers) {
		return fmt.Errorf("modelfile: spec weights exceed %d TiB (%d layers of %d bytes)", MaxModelBytes>>40, s.Layers, layer)
	}
	return nil
}
