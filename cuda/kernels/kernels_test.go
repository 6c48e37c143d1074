package kernels

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/cuda/driver"
	"servelab/cuda/kernels/internal/build"
	"servelab/cuda/nvrtc"
)

// requireNVRTC loads NVRTC or skips; under CI=true (.ci/run, which installs NVRTC with
// `make tools`) or SERVELAB_REQUIRE_NVRTC=1 a missing NVRTC fails the test.
func requireNVRTC(t *testing.T) *nvrtc.NVRTC {
	t.Helper()
	n, err := nvrtc.Load()
	if err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("SERVELAB_REQUIRE_NVRTC") == "1" {
			t.Fatalf("NVRTC is required here (CI=true or SERVELAB_REQUIRE_NVRTC=1): %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	return n
}

// TestGeneratedKernelsAreCurrent rebuilds kernels.cu with NVRTC and fails if any
// generated file differs from the committed one: run go generate ./cuda/kernels.
func TestGeneratedKernelsAreCurrent(t *testing.T) {
	t.Parallel()
	n := requireNVRTC(t)
	src, err := os.ReadFile(build.Source)
	if err != nil {
		t.Fatal(err)
	}
	files, err := build.Files(n, string(src))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{build.CubinFile, build.PTXFile, build.ResourcesFile} {
		got, ok := files[name]
		if !ok {
			t.Fatalf("the build wrote no %s", name)
		}
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("%v (run go generate ./cuda/kernels)", err)
		}
		if !bytes.Equal(got, committed) {
			t.Errorf("%s is stale: kernels.cu compiles to %d bytes that differ from the committed %d (run go generate ./cuda/kernels and commit)", name, len(got), len(committed))
		}
	}
	if !bytes.Equal(cubinImage, files[build.CubinFile]) || !bytes.Equal(ptxImage, files[build.PTXFile]) {
		t.Error("the embedded images are not the generated files")
	}
}

var (
	entryRe = regexp.MustCompile(`(?s)\.visible \.entry (\w+)\(\s*(.*?)\)`)
	paramRe = regexp.MustCompile(`^\.param (\.\w+) (\w+)$`)
)

// ptxEntries parses the .visible .entry declarations of a PTX text: each kernel's
// parameter types in order.
func ptxEntries(t *testing.T, ptx string) (names []string, params map[string][]string) {
	t.Helper()
	params = map[string][]string{}
	for _, m := range entryRe.FindAllStringSubmatch(ptx, -1) {
		name := m[1]
		var types []string
		for i, p := range strings.Split(m[2], ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			pm := paramRe.FindStringSubmatch(p)
			if pm == nil {
				t.Fatalf("PTX entry %s: parameter %d %q is not \".param .type name\"", name, i, p)
			}
			if want := fmt.Sprintf("%s_param_%d", name, i); pm[2] != want {
				t.Fatalf("PTX entry %s: parameter %d is named %s, want %s", name, i, pm[2], want)
			}
			types = append(types, pm[1])
		}
		names = append(names, name)
		params[name] = types
	}
	return names, params
}

// TestPTXEntriesMatchTable checks every entry point of the embedded PTX against Table:
// the same kernels, each with its parameters' count and types in order (PTX names
// parameters by position, so a swapped pair of different types, a missing or an extra
// parameter fails here; the launches' order of same-typed parameters is
// TestLaunchesMatchTable's).
func TestPTXEntriesMatchTable(t *testing.T) {
	ptx, err := os.ReadFile(build.PTXFile)
	if err != nil {
		t.Fatal(err)
	}
	names, params := ptxEntries(t, string(ptx))
	if len(names) == 0 {
		t.Fatal("no .visible .entry in kernels.ptx")
	}
	got := map[string][]string{}
	for _, n := range names {
		got[n] = params[n]
	}
	want := map[string][]string{}
	for _, k := range Table {
		var types []string
		for _, p := range k.Params {
			types = append(types, p.Kind.PTXType())
		}
		want[k.Name] = types
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("PTX entry points differ from Table (-table +ptx):\n%s", d)
	}
	if !strings.Contains(string(ptx), ".target sm_80") {
		t.Error("kernels.ptx does not target sm_80 (compute_80), which A100s and newer JIT-compile")
	}
}

// TestPTXParsing checks the parser on a hand-written PTX text, so TestPTXEntriesMatchTable
// cannot pass by parsing nothing.
func TestPTXParsing(t *testing.T) {
	ptx := `.visible .entry a(
	.param .u64 a_param_0,
	.param .u32 a_param_1,
	.param .f32 a_param_2
)
{ ret; }
.visible .entry b()
{ ret; }
`
	names, params := ptxEntries(t, ptx)
	if d := cmp.Diff([]string{"a", "b"}, names); d != "" {
		t.Errorf("names (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string][]string{"a": {".u64", ".u32", ".f32"}, "b": nil}, params); d != "" {
		t.Errorf("params (-want +got):\n%s", d)
	}
}

// launchRecord is one launch a recorder saw.
type launchRecord struct {
	Name        string
	Grid, Block driver.Dim3
	Shared      uint32
	Args        []any
}

type recorder struct {
	t    *testing.T
	runs []launchRecord
}

func (r *recorder) Launch(k *Kernel, grid, block driver.Dim3, sharedMem uint32, s driver.Stream, args []any) error {
	r.t.Helper()
	if len(args) != len(k.Params) {
		r.t.Errorf("%s: %d arguments, the table has %d parameters", k.Name, len(args), len(k.Params))
	}
	for i, a := range args {
		if i >= len(k.Params) {
			break
		}
		var got Kind
		switch a.(type) {
		case driver.DevicePtr:
			got = Ptr
		case int32:
			got = I32
		case float32:
			got = F32
		}
		if got != k.Params[i].Kind {
			r.t.Errorf("%s: argument %d (%s) reaches the launcher as %T, the table says %s", k.Name, i, k.Params[i].Name, a, k.Params[i].Kind)
		}
	}
	if block.X*block.Y*block.Z > 1024 || block.X%32 != 0 {
		r.t.Errorf("%s: block %+v: want a multiple of 32 threads, at most 1024", k.Name, block)
	}
	r.runs = append(r.runs, launchRecord{k.Name, grid, block, sharedMem, append([]any(nil), args...)})
	return nil
}

// Distinct, 16-byte aligned fake device pointers, so a swapped pair shows.
const (
	pA driver.DevicePtr = 0x10000 * (iota + 1)
	pB
	pC
	pD
	pE
	pF
	pG
	pH
)

func d3(x, y uint32) driver.Dim3 { return driver.Dim3{X: x, Y: y, Z: 1} }

// TestLaunchesMatchTable calls every launch function with a recording launcher and
// checks the kernel, grid, block and arguments (in the table's order and types) against
// what ops.go documents.
func TestLaunchesMatchTable(t *testing.T) {
	const s = driver.Stream(0)
	cases := []struct {
		name string
		call func(m *Module) error
		want launchRecord
	}{
		{"EmbedF32", func(m *Module) error { return m.EmbedF32(s, pA, pB, pC, 3, 4096) },
			launchRecord{"sl_embed_f32", d3(3, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(4096)}}},
		{"EmbedBF16", func(m *Module) error { return m.EmbedBF16(s, pA, pB, pC, 5, 64) },
			launchRecord{"sl_embed_bf16", d3(5, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(64)}}},
		{"RMSNorm", func(m *Module) error { return m.RMSNorm(s, pA, pB, pC, pD, 7, 4096, 1e-5) },
			launchRecord{"sl_rmsnorm", d3(7, 1), d3(256, 1), 0, []any{pA, pB, pC, pD, int32(4096), float32(1e-5)}}},
		{"RopeStore", func(m *Module) error { return m.RopeStore(s, pA, pB, pC, pD, pE, pF, pG, pH, 9, 32, 8, 128, 0.125) },
			launchRecord{"sl_rope_store", d3(9, 1), d3(128, 1), 0, []any{pA, pB, pC, pD, pE, pF, pG, pH, int32(32), int32(8), int32(128), float32(0.125)}}},
		{"AttnDecode", func(m *Module) error { return m.AttnDecode(s, pA, pB, pC, pD, pE, pF, pG, pH, 6, 40, 32, 8, 128, 16) },
			launchRecord{"sl_attn_decode", d3(32, 6), d3(128, 1), 0, []any{pA, pB, pC, pD, pE, pF, pG, pH, int32(40), int32(32), int32(8), int32(128), int32(16)}}},
		{"AttnPrefill", func(m *Module) error {
			return m.AttnPrefill(s, pA, pB, pC, pD, pE, pF, pG, pH, 100, 40, 32, 8, 256, 16)
		},
			launchRecord{"sl_attn_prefill", d3(100, 1), d3(128, 1), 0, []any{pA, pB, pC, pD, pE, pF, pG, pH, int32(40), int32(32), int32(8), int32(256), int32(16)}}},
		{"AttnPrefillBF16", func(m *Module) error {
			return m.AttnPrefillBF16(s, pA, pB, pC, pD, pE, pF, pG, pH, 100, 40, 32, 8, 128, 16)
		},
			launchRecord{"sl_attn_prefill_bf16", d3(100, 1), d3(128, 1), 0, []any{pA, pB, pC, pD, pE, pF, pG, pH, int32(40), int32(32), int32(8), int32(128), int32(16)}}},
		{"AttnPrefillBF16GQA group 4", func(m *Module) error {
			return m.AttnPrefillBF16GQA(s, pA, pB, pC, pD, pE, pF, pG, pH, 25, 40, 32, 8, 128, 16)
		},
			launchRecord{"sl_attn_prefill_bf16_gqa", d3(25, 1), d3(128, 1), 0, []any{pA, pB, pC, pD, pE, pF, pG, pH, int32(40), int32(32), int32(8), int32(128), int32(16)}}},
		{"AttnPrefillBF16GQA group 8", func(m *Module) error {
			return m.AttnPrefillBF16GQA(s, pA, pB, pC, pD, pE, pF, pG, pH, 7, 3, 64, 8, 64, 1)
		},
			launchRecord{"sl_attn_prefill_bf16_gqa", d3(7, 1), d3(256, 1), 0, []any{pA, pB, pC, pD, pE, pF, pG, pH, int32(3), int32(64), int32(8), int32(64), int32(1)}}},
		{"SiLUMul", func(m *Module) error { return m.SiLUMul(s, pA, pB, 3, 1000) },
			launchRecord{"sl_silu_mul", d3(12, 1), d3(256, 1), 0, []any{pA, pB, int32(3), int32(1000)}}},
		{"Add", func(m *Module) error { return m.Add(s, pA, pB, 257) },
			launchRecord{"sl_add", d3(2, 1), d3(256, 1), 0, []any{pA, pB, int32(257)}}},
		{"GemmF32", func(m *Module) error { return m.GemmF32(s, pA, pB, pC, 65, 129, 7, true) },
			launchRecord{"sl_gemm_f32", d3(3, 2), d3(256, 1), 0, []any{pA, pB, pC, int32(65), int32(129), int32(7), int32(1)}}},
		{"GemmBF16", func(m *Module) error { return m.GemmBF16(s, pA, pB, pC, 129, 4096, 4096, false) },
			launchRecord{"sl_gemm_bf16", d3(32, 2), d3(256, 1), 0, []any{pA, pB, pC, int32(129), int32(4096), int32(4096), int32(0)}}},
		{"GemvBF16", func(m *Module) error { return m.GemvBF16(s, pA, pB, pC, 8, 4100, 4096, true) },
			launchRecord{"sl_gemv_bf16", d3(513, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(8), int32(4100), int32(4096), int32(1)}}},
		{"Linear f32", func(m *Module) error { return m.Linear(s, pA, pB, pC, 1, 64, 64, "float32", false) },
			launchRecord{"sl_gemm_f32", d3(1, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(1), int32(64), int32(64), int32(0)}}},
		{"Linear bf16 decode", func(m *Module) error { return m.Linear(s, pA, pB, pC, 8, 64, 64, "bfloat16", false) },
			launchRecord{"sl_gemv_bf16", d3(8, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(8), int32(64), int32(64), int32(0)}}},
		{"GemmBF16Skinny", func(m *Module) error { return m.GemmBF16Skinny(s, pA, pB, pC, 33, 4100, 4104, true) },
			launchRecord{"sl_gemm_bf16_skinny", d3(129, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(33), int32(4100), int32(4104), int32(1)}}},
		{"Linear bf16 skinny 9 rows", func(m *Module) error { return m.Linear(s, pA, pB, pC, 9, 64, 64, "bfloat16", true) },
			launchRecord{"sl_gemm_bf16_skinny", d3(2, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(9), int32(64), int32(64), int32(1)}}},
		{"Linear bf16 skinny 64 rows", func(m *Module) error { return m.Linear(s, pA, pB, pC, 64, 4096, 4096, "bfloat16", false) },
			launchRecord{"sl_gemm_bf16_skinny", d3(128, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(64), int32(4096), int32(4096), int32(0)}}},
		{"Linear bf16 prefill", func(m *Module) error { return m.Linear(s, pA, pB, pC, 65, 64, 64, "bfloat16", true) },
			launchRecord{"sl_gemm_bf16", d3(1, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(65), int32(64), int32(64), int32(1)}}},
		{"Argmax", func(m *Module) error { return m.Argmax(s, pA, pB, 4, 128256) },
			launchRecord{"sl_argmax", d3(4, 1), d3(256, 1), 0, []any{pA, pB, int32(128256)}}},
		{"TopK", func(m *Module) error { return m.TopK(s, pA, pB, pC, 2, 32000, 50) },
			launchRecord{"sl_topk", d3(2, 1), d3(256, 1), 0, []any{pA, pB, pC, int32(32000), int32(50)}}},
		{"Softmax", func(m *Module) error { return m.Softmax(s, pA, pB, 3, 32000, 1/0.7) },
			launchRecord{"sl_softmax", d3(3, 1), d3(256, 1), 0, []any{pA, pB, int32(32000), float32(1 / 0.7)}}},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{t: t}
			if err := c.call(&Module{l: r}); err != nil {
				t.Fatal(err)
			}
			if len(r.runs) != 1 {
				t.Fatalf("%d launches, want 1", len(r.runs))
			}
			if d := cmp.Diff(c.want, r.runs[0]); d != "" {
				t.Errorf("launch (-want +got):\n%s", d)
			}
			seen[r.runs[0].Name] = true
		})
	}
	for _, k := range Table {
		if !seen[k.Name] {
			t.Errorf("no launch function of ops.go was checked launching %s", k.Name)
		}
	}
}

// TestLaunchErrors checks the launch functions' argument errors and that nothing is
// launched then, and that an empty grid launches nothing.
func TestLaunchErrors(t *testing.T) {
	const s = driver.Stream(0)
	cases := []struct {
		name string
		call func(m *Module) error
		want string // a substring of the error; "" for no error and no launch
	}{
		{"decode head dim too large", func(m *Module) error { return m.AttnDecode(s, pA, pB, pC, pD, pE, pF, pG, pH, 1, 1, 1, 1, 258, 16) }, "head dim 258"},
		{"decode head dim odd", func(m *Module) error { return m.AttnDecode(s, pA, pB, pC, pD, pE, pF, pG, pH, 1, 1, 1, 1, 63, 16) }, "head dim 63"},
		{"prefill head dim too large", func(m *Module) error { return m.AttnPrefill(s, pA, pB, pC, pD, pE, pF, pG, pH, 1, 1, 1, 1, 512, 16) }, "head dim 512"},
		{"flash prefill head dim above its limit", func(m *Module) error {
			return m.AttnPrefillBF16(s, pA, pB, pC, pD, pE, pF, pG, pH, 1, 1, 1, 1, 258, 16)
		}, "head dim 258"},
		{"flash prefill head dim odd", func(m *Module) error {
			return m.AttnPrefillBF16(s, pA, pB, pC, pD, pE, pF, pG, pH, 1, 1, 1, 1, 63, 16)
		}, "head dim 63"},
		{"gqa prefill group 3", func(m *Module) error {
			return m.AttnPrefillBF16GQA(s, pA, pB, pC, pD, pE, pF, pG, pH, 1, 1, 12, 4, 64, 16)
		}, "12 heads over 4 kv heads"},
		{"gqa prefill group 16", func(m *Module) error {
			return m.AttnPrefillBF16GQA(s, pA, pB, pC, pD, pE, pF, pG, pH, 1, 1, 32, 2, 64, 16)
		}, "32 heads over 2 kv heads"},
		{"gqa prefill head dim 256", func(m *Module) error {
			return m.AttnPrefillBF16GQA(s, pA, pB, pC, pD, pE, pF, pG, pH, 1, 1, 8, 2, 256, 16)
		}, "head dim 256"},
		{"gemm k not multiple of 8", func(m *Module) error { return m.GemmBF16(s, pA, pB, pC, 16, 16, 12, false) }, "k = 12"},
		{"gemv k not multiple of 8", func(m *Module) error { return m.GemvBF16(s, pA, pB, pC, 1, 16, 4, false) }, "k = 4"},
		{"skinny k not multiple of 8", func(m *Module) error { return m.GemmBF16Skinny(s, pA, pB, pC, 16, 16, 20, false) }, "k = 20"},
		{"skinny too many rows", func(m *Module) error { return m.GemmBF16Skinny(s, pA, pB, pC, 65, 16, 16, false) }, "65 rows"},
		{"skinny x misaligned", func(m *Module) error { return m.GemmBF16Skinny(s, pA, pB+8, pC, 16, 16, 16, false) }, "16-byte aligned"},
		{"gemv too many rows", func(m *Module) error { return m.GemvBF16(s, pA, pB, pC, 9, 16, 16, false) }, "9 rows"},
		{"gemm x misaligned", func(m *Module) error { return m.GemmBF16(s, pA, pB+4, pC, 16, 16, 16, false) }, "16-byte aligned"},
		{"gemv w misaligned", func(m *Module) error { return m.GemvBF16(s, pA, pB, pC+8, 1, 16, 16, false) }, "16-byte aligned"},
		{"topk k 0", func(m *Module) error { return m.TopK(s, pA, pB, pC, 1, 100, 0) }, "k = 0"},
		{"topk k too large", func(m *Module) error { return m.TopK(s, pA, pB, pC, 1, 1000, MaxTopK+1) }, "k = 257"},
		{"topk k above vocab", func(m *Module) error { return m.TopK(s, pA, pB, pC, 1, 10, 11) }, "vocabulary 10"},
		{"int32 overflow", func(m *Module) error { return m.EmbedF32(s, pA, pB, pC, 1, 1<<31) }, "overflows int32"},
		{"int32 underflow", func(m *Module) error { return m.Add(s, pA, pB, -1<<31-1) }, "overflows int32"},
		{"unknown dtype", func(m *Module) error { return m.Linear(s, pA, pB, pC, 1, 8, 8, "float16", false) }, `"float16"`},
		{"no rows launches nothing", func(m *Module) error { return m.RMSNorm(s, pA, pB, 0, pD, 0, 64, 1e-5) }, ""},
		{"no elements launches nothing", func(m *Module) error { return m.Add(s, pA, pB, 0) }, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{t: t}
			err := c.call(&Module{l: r})
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			if len(r.runs) != 0 {
				t.Errorf("%d launches, want none", len(r.runs))
			}
		})
	}
}

// budget is a kernel's resource limits: registers per thread, static shared memory per
// block, and stack/spill bytes (0: a spill in a hot loop costs local-memory traffic).
type budget struct {
	Registers, SharedBytes, StackBytes, SpillBytes int
	Threads                                        int // the block size ops.go launches it with
}

// budgets: each kernel's limits, a little above what it uses at the time of writing
// (kernels_sm90.resources.txt), so a change that makes a kernel much heavier fails here
// and has to revise its budget knowingly. sl_gemm_bf16's 192 registers (64 float32
// accumulators, 24 fragment registers and 16 prefetched x values per thread) allow one
// 256-thread block per SM; its 40 KiB of shared memory is two stages of 128x40 bf16 for
// x and w. sl_gemm_bf16_skinny's 128 registers (32 accumulators, 32 of w in flight, 32 of
// prefetched x) are its __launch_bounds__(256, 2) cap, two blocks per SM, without spills;
// its 40 KiB is two 64x160 bf16 tiles of x, reused for the k-ways' reduction.
// sl_attn_prefill_bf16's 128 registers (its __launch_bounds__(128, 4) cap: a 16 x 128
// float32 accumulator is 64 per thread, plus the 16 x 16 scores and the softmax state)
// allow four 128-thread blocks per SM, five by its 42.75 KiB of shared memory (a 16 x 264
// bf16 q tile and two 64 x 136 bf16 tiles of keys and values).
var budgets = map[string]budget{
	"sl_embed_f32":             {Registers: 32, Threads: 256},
	"sl_embed_bf16":            {Registers: 32, Threads: 256},
	"sl_rmsnorm":               {Registers: 40, SharedBytes: 128, Threads: 256},
	"sl_rope_store":            {Registers: 48, Threads: 128},
	"sl_attn_decode":           {Registers: 96, SharedBytes: 5152, Threads: 128},
	"sl_attn_prefill":          {Registers: 96, SharedBytes: 4096, Threads: 128},
	"sl_attn_prefill_bf16":     {Registers: 128, SharedBytes: 43776, Threads: 128},
	"sl_attn_prefill_bf16_gqa": {Registers: 128, SharedBytes: 44032, Threads: 256},
	"sl_silu_mul":              {Registers: 32, Threads: 256},
	"sl_add":                   {Registers: 16, Threads: 256},
	"sl_gemm_f32":              {Registers: 64, SharedBytes: 8704, Threads: 256},
	"sl_gemm_bf16":             {Registers: 192, SharedBytes: 40960, Threads: 256},
	"sl_gemm_bf16_skinny":      {Registers: 128, SharedBytes: 40960, Threads: 256},
	"sl_gemv_bf16":             {Registers: 64, Threads: 256},
	"sl_argmax":                {Registers: 32, SharedBytes: 64, Threads: 256},
	"sl_topk":                  {Registers: 48, SharedBytes: 4108, Threads: 256},
	"sl_softmax":               {Registers: 32, SharedBytes: 128, Threads: 256},
}

// Per-SM limits of sm_80/sm_90: 65536 registers (allocated per warp in units of 256,
// i.e. a thread's count rounded up to a multiple of 8), 48 KiB of static shared memory
// per block.
const (
	regsPerSM        = 65536
	maxStaticShared  = 48 << 10
	regsGranularity  = 8
	maxRegsPerThread = 255
)

// TestRegisterBudgets checks each kernel's registers, spills and shared memory, as ptxas
// reported them for the committed cubin (kernels_sm90.resources.txt, which
// TestGeneratedKernelsAreCurrent keeps current), against budgets; a budget must itself
// keep a 256-thread block launchable.
func TestRegisterBudgets(t *testing.T) {
	b, err := os.ReadFile(build.ResourcesFile)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := build.ParseResources(b)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range rs {
		seen[r.Kernel] = true
		bud, ok := budgets[r.Kernel]
		if !ok {
			t.Errorf("%s: no budget (a kernel not in the table?)", r.Kernel)
			continue
		}
		if _, ok := Lookup(r.Kernel); !ok {
			t.Errorf("%s is in the cubin but not in Table", r.Kernel)
		}
		rounded := (bud.Registers + regsGranularity - 1) / regsGranularity * regsGranularity
		if bud.Registers > maxRegsPerThread || rounded*256 > regsPerSM || rounded*bud.Threads > regsPerSM {
			t.Errorf("%s: a budget of %d registers does not keep a 256-thread block launchable (%d x 256 > %d)", r.Kernel, bud.Registers, rounded, regsPerSM)
		}
		if bud.SharedBytes > maxStaticShared {
			t.Errorf("%s: a shared-memory budget of %d bytes is above the 48 KiB of static shared memory", r.Kernel, bud.SharedBytes)
		}
		if r.Registers > bud.Registers {
			t.Errorf("%s: %d registers per thread, budget %d", r.Kernel, r.Registers, bud.Registers)
		}
		if r.SharedBytes > bud.SharedBytes {
			t.Errorf("%s: %d bytes of shared memory, budget %d", r.Kernel, r.SharedBytes, bud.SharedBytes)
		}
		if r.StackBytes > bud.StackBytes {
			t.Errorf("%s: %d bytes of stack frame, budget %d", r.Kernel, r.StackBytes, bud.StackBytes)
		}
		if r.SpillStores > bud.SpillBytes || r.SpillLoads > bud.SpillBytes {
			t.Errorf("%s: spills %d bytes stored, %d loaded; budget %d", r.Kernel, r.SpillStores, r.SpillLoads, bud.SpillBytes)
		}
	}
	for _, k := range Table {
		if !seen[k.Name] {
			t.Errorf("%s: no resource line in %s (not compiled into the cubin?)", k.Name, build.ResourcesFile)
		}
	}
}

// TestParseLog checks the ptxas log parser on a log in NVRTC 11.8's format.
func TestParseLog(t *testing.T) {
	log := `ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'b_kernel' for 'sm_90'
ptxas info    : Function properties for b_kernel
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 167 registers, 40960 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'a_kernel' for 'sm_90'
ptxas info    : Function properties for a_kernel
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, 380 bytes cmem[0]
`
	got, err := build.ParseLog(log)
	if err != nil {
		t.Fatal(err)
	}
	want := []build.Resources{
		{Kernel: "a_kernel", Registers: 10},
		{Kernel: "b_kernel", Registers: 167, StackBytes: 16, SpillStores: 8, SpillLoads: 4, SharedBytes: 40960},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ParseLog (-want +got):\n%s", d)
	}
	back, err := build.ParseResources(build.FormatResources(got))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(got, back); d != "" {
		t.Errorf("ParseResources(FormatResources) (-want +got):\n%s", d)
	}
	if _, err := build.ParseLog("nothing"); err == nil {
		t.Error("ParseLog of a log without entries: no error")
	}
}

// TestImage checks which image each GPU gets.
func TestImage(t *testing.T) {
	cases := []struct {
		major, minor int
		kind         string
		err          bool
	}{
		{9, 0, "cubin sm_90", false},
		{8, 0, "ptx (JIT)", false},
		{8, 9, "ptx (JIT)", false},
		{10, 0, "ptx (JIT)", false},
		{7, 5, "", true},
	}
	for _, c := range cases {
		img, kind, err := Image(c.major, c.minor)
		if (err != nil) != c.err || kind != c.kind {
			t.Errorf("Image(%d.%d) = %q, %v; want %q, error %v", c.major, c.minor, kind, err, c.kind, c.err)
			continue
		}
		switch kind {
		case "cubin sm_90":
			if !bytes.HasPrefix(img, []byte("\x7fELF")) {
				t.Errorf("Image(9.0) is not an ELF cubin")
			}
		case "ptx (JIT)":
			if img[len(img)-1] != 0 || !bytes.Contains(img, []byte(".visible .entry sl_gemm_bf16(")) {
				t.Errorf("Image(%d.%d) is not NUL-terminated PTX with the kernels", c.major, c.minor)
			}
		}
	}
}

// TestGroupItems checks AttnPrefillBF16GQA's items: one per (sequence, kv head, query
// tile), from the items of each group's first query head.
func TestGroupItems(t *testing.T) {
	// Two sequences, 4 query heads: sequence 0 one tile, sequence 1 two.
	var items []int32
	for h := range int32(4) {
		items = append(items, 0, h, 0, 3)
	}
	for h := range int32(4) {
		items = append(items, 1, h, 0, 16, 1, h, 16, 18)
	}
	for _, tc := range []struct {
		group int
		want  []int32
	}{
		{1, items},
		{2, []int32{0, 0, 0, 3, 0, 1, 0, 3, 1, 0, 0, 16, 1, 0, 16, 18, 1, 1, 0, 16, 1, 1, 16, 18}},
		{4, []int32{0, 0, 0, 3, 1, 0, 0, 16, 1, 0, 16, 18}},
	} {
		if d := cmp.Diff(tc.want, GroupItems(nil, items, tc.group)); d != "" {
			t.Errorf("group %d (-want +got):\n%s", tc.group, d)
		}
	}
}
