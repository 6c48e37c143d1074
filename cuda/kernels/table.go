// Package kernels holds servelab's CUDA kernels: their CUDA C source (kernels.cu), the
// sm_90 cubin and the PTX that `go generate` compiles from it with NVRTC (committed and
// embedded: nothing compiles at run time; the driver JIT-compiles the PTX for GPUs other
// than sm_90), and the Go side of every launch: the table of each kernel's parameters and
// typed launch functions that compute grids and check arguments.
//
// Conventions every kernel follows:
//   - Activations, norms' weights, rope tables and the KV cache are float32; a weight
//     matrix is float32 or bfloat16 (raw uint16 bits). Matrices are row-major; a linear
//     layer's weight is [out, in] as Hugging Face stores it, so y = x·Wᵀ.
//   - Sizes are int32 parameters; offsets inside kernels are computed in 64 bits.
//   - The KV cache of one layer is the CPU engine's layout (engine/model/kvcache.go):
//     keys (and values) [numBlocks][blockSize][kvHeads][headDim] float32, keys after
//     rotary embedding, so KV blocks move between CPU and GPU engines byte for byte.
//   - A nullable pointer parameter is 0 for "absent".
package kernels

// Kind is a kernel parameter's type as the launch passes it.
type Kind uint8

const (
	Ptr Kind = iota + 1 // a device pointer: PTX .u64
	I32                 // int: PTX .u32 (PTX spells a 32-bit int parameter .u32)
	F32                 // float: PTX .f32
)

func (k Kind) String() string {
	switch k {
	case Ptr:
		return "ptr"
	case I32:
		return "i32"
	case F32:
		return "f32"
	}
	return "invalid"
}

// PTXType is the PTX parameter type a Kind compiles to.
func (k Kind) PTXType() string {
	switch k {
	case Ptr:
		return ".u64"
	case I32:
		return ".u32"
	case F32:
		return ".f32"
	}
	return ""
}

// Param is one kernel parameter: its name in kernels.cu and its kind.
type Param struct {
	Name string
	Kind Kind
}

// Kernel is one entry point of kernels.cu.
type Kernel struct {
	Name   string
	Params []Param
}

func p(name string) Param   { return Param{name, Ptr} }
func i32(name string) Param { return Param{name, I32} }
func f32(name string) Param { return Param{name, F32} }

// Table is every kernel in kernels.cu with its parameters in order. Each kernel's
// semantics, grid and block are documented on its launch function (ops.go); a test
// checks this table against the PTX entry points, so a kernel whose signature drifts
// from its launches fails CI without a GPU.
var Table = []Kernel{
	{"sl_embed_f32", []Param{p("x"), p("table"), p("tokens"), i32("dim")}},
	{"sl_embed_bf16", []Param{p("x"), p("table"), p("tokens"), i32("dim")}},
	{"sl_rmsnorm", []Param{p("out"), p("x"), p("rows"), p("w"), i32("dim"), f32("eps")}},
	{"sl_rope_store", []Param{p("qkv"), p("bias"), p("cos"), p("sin"), p("tok_pos"), p("tok_slot"), p("kcache"), p("vcache"),
		i32("heads"), i32("kv_heads"), i32("head_dim"), f32("scale")}},
	{"sl_attn_decode", []Param{p("out"), p("qkv"), p("kcache"), p("vcache"), p("seqs"), p("seq_start"), p("seq_pos"), p("block_tables"),
		i32("max_blocks"), i32("heads"), i32("kv_heads"), i32("head_dim"), i32("block_size")}},
	{"sl_attn_prefill", []Param{p("out"), p("qkv"), p("kcache"), p("vcache"), p("items"), p("seq_start"), p("seq_pos"), p("block_tables"),
		i32("max_blocks"), i32("heads"), i32("kv_heads"), i32("head_dim"), i32("block_size")}},
	{"sl_attn_prefill_bf16", []Param{p("out"), p("qkv"), p("kcache"), p("vcache"), p("items"), p("seq_start"), p("seq_pos"), p("block_tables"),
		i32("max_blocks"), i32("heads"), i32("kv_heads"), i32("head_dim"), i32("block_size")}},
	{"sl_attn_prefill_bf16_gqa", []Param{p("out"), p("qkv"), p("kcache"), p("vcache"), p("items"), p("seq_start"), p("seq_pos"), p("block_tables"),
		i32("max_blocks"), i32("heads"), i32("kv_heads"), i32("head_dim"), i32("block_size")}},
	{"sl_silu_mul", []Param{p("act"), p("gu"), i32("rows"), i32("hidden")}},
	{"sl_add", []Param{p("x"), p("y"), i32("n")}},
	{"sl_gemm_f32", []Param{p("y"), p("x"), p("w"), i32("m"), i32("n"), i32("k"), i32("accumulate")}},
	{"sl_gemm_bf16", []Param{p("y"), p("x"), p("w"), i32("m"), i32("n"), i32("k"), i32("accumulate")}},
	{"sl_gemm_bf16_skinny", []Param{p("y"), p("x"), p("w"), i32("m"), i32("n"), i32("k"), i32("accumulate")}},
	{"sl_gemv_bf16", []Param{p("y"), p("x"), p("w"), i32("m"), i32("n"), i32("k"), i32("accumulate")}},
	{"sl_argmax", []Param{p("idx"), p("logits"), i32("vocab")}},
	{"sl_topk", []Param{p("idx"), p("val"), p("logits"), i32("vocab"), i32("k")}},
	{"sl_softmax", []Param{p("probs"), p("logits"), i32("vocab"), f32("inv_temperature")}},
}

// Lookup returns the table entry of the kernel called name.
func Lookup(name string) (Kernel, bool) {
	for _, k := range Table {
		if k.Name == name {
			return k, true
		}
	}
	return Kernel{}, false
}
