package gpu

import (
	"fmt"
	"math"
	"testing"
	"unsafe"

	"servelab/cuda/driver"
	"servelab/cuda/kernels"
	"servelab/engine/model"
	"servelab/engine/modelfile"
)

// Llama-3.1-8B's sizes and launches, checked on the CPU: what the fake device and the
// emulation, which run the tiny presets, cannot show. Nothing here computes; the device
// is addresses without memory and the launcher checks each launch against CUDA's limits.

// h200Total is an H200's memory as cuMemGetInfo reports it (nvidia-smi's 143771 MiB).
const h200Total = 143771 << 20

func llama8B(t testing.TB) model.Config {
	t.Helper()
	spec, err := modelfile.Preset("llama-3.1-8b")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := modelfile.ConfigJSON(spec)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// addrDevice hands out 256-byte aligned device addresses (as cuMemAlloc aligns) from
// 1 TiB up, without memory: copies and memsets do nothing, reads leave dst as it was.
type addrDevice struct {
	next      driver.DevicePtr
	allocated uint64
	sizes     []uintptr
}

func (d *addrDevice) MemAlloc(n uintptr) (driver.DevicePtr, error) {
	if d.next == 0 {
		d.next = 1 << 40
	}
	p := d.next
	d.next += driver.DevicePtr((n + 255) &^ 255)
	d.allocated += uint64(n)
	d.sizes = append(d.sizes, n)
	return p, nil
}
func (d *addrDevice) MemFree(driver.DevicePtr) error { return nil }

// MemAllocHost is Go memory: the logits rows are slices of it.
func (d *addrDevice) MemAllocHost(n uintptr) (unsafe.Pointer, error) {
	return unsafe.Pointer(unsafe.SliceData(make([]byte, n))), nil
}
func (d *addrDevice) MemFreeHost(unsafe.Pointer) error                { return nil }
func (d *addrDevice) MemcpyHtoD(driver.DevicePtr, []byte) error       { return nil }
func (d *addrDevice) MemcpyDtoH([]byte, driver.DevicePtr) error       { return nil }
func (d *addrDevice) MemsetD8(driver.DevicePtr, uint8, uintptr) error { return nil }
func (d *addrDevice) CtxSynchronize() error                           { return nil }
func (d *addrDevice) MemGetInfo() (uint64, uint64, error) {
	return h200Total - d.allocated, h200Total, nil
}

// limitLauncher refuses a launch past CUDA's limits (grid x below 2³¹, y and z at most
// 65535, at most 1024 threads a block) or with a negative int parameter, and records
// sl_attn_decode's launches.
type limitLauncher struct {
	launches int
	decode   []decodeLaunch
}

type decodeLaunch struct {
	seqs  driver.DevicePtr
	nSeqs uint32
}

func (l *limitLauncher) Launch(k *kernels.Kernel, grid, block driver.Dim3, _ uint32, _ driver.Stream, args []any) error {
	l.launches++
	if grid.X > math.MaxInt32 || grid.Y > 65535 || grid.Z > 65535 {
		return fmt.Errorf("%s: grid %+v past CUDA's limits (x < 2^31, y and z <= 65535)", k.Name, grid)
	}
	if block.X*block.Y*block.Z > 1024 {
		return fmt.Errorf("%s: block %+v: more than 1024 threads", k.Name, block)
	}
	for i, a := range args {
		if v, ok := a.(int32); ok && v < 0 {
			return fmt.Errorf("%s: parameter %s = %d", k.Name, k.Params[i].Name, v)
		}
	}
	if k.Name == "sl_attn_decode" {
		l.decode = append(l.decode, decodeLaunch{args[4].(driver.DevicePtr), grid.Y})
	}
	return nil
}

// addrBackend is an 8B backend in bfloat16 over addrDevice, set up as setup does: weights,
// rope tables for the model's positions, activations for 2048 tokens and 256 sequences.
func addrBackend(t *testing.T, cfg model.Config, l kernels.Launcher) (*Backend, *addrDevice) {
	t.Helper()
	dev := &addrDevice{}
	b := &Backend{cfg: cfg, blockSize: 16, dev: dev, ops: kernels.NewModule(l)}
	b.k = gpuKernels{b: b, dtype: BFloat16, eps: float32(cfg.NormEps), scale: float32(1 / math.Sqrt(float64(cfg.HeadDim)))}
	b.wts.layers = make([]layerWeights, cfg.Layers)
	for _, s := range model.TensorSpecs(cfg) {
		if p := b.wts.ptr(s); *p == 0 {
			size := uintptr(s.Total) * uintptr(elemSize(s.Weight, BFloat16))
			*p, _ = dev.MemAlloc(size)
			b.info.WeightBytes += int64(size)
		}
	}
	if err := b.k.ensureRope(min(cfg.MaxPos, 1<<17)); err != nil {
		t.Fatal(err)
	}
	if err := b.k.reserve(DefaultMaxNumBatchedTokens, 256); err != nil {
		t.Fatal(err)
	}
	return b, dev
}

// TestLlama8BSizes: the 8B's weights, activations and KV cache on an H200 with vLLM's
// defaults (--gpu-memory-utilization 0.9, max_num_batched_tokens 2048, max_num_seqs 256),
// worked out by hand, and the allocations that make them.
func TestLlama8BSizes(t *testing.T) {
	cfg := llama8B(t)
	b, dev := addrBackend(t, cfg, &limitLauncher{})
	// bf16 matrices (8,030,261,248 parameters less 65 norms of 4096) and float32 norms.
	const weights = (8030261248-65*4096)*2 + 65*4096*4
	// Per token: residual and its norm (2·4096), q/k/v (4096+2·1024), attention output
	// (4096), gate/up (2·14336), SwiGLU (14336): 61440 float32; per logits row its normed
	// row, 128256 logits and its argmax.
	const acts2048 = 4 * (2048*61440 + 256*(4096+128256+1))
	const context = 512 << 20 // a CUDA context's own memory, for the sizing below
	used := uint64(weights + acts2048 + context)
	const wantBlocks = 28238 // (0.9·143771 MiB - used) / 4 MiB
	for _, c := range []struct {
		name      string
		got, want int64
	}{
		{"weight bytes", b.info.WeightBytes, weights},
		{"activation bytes (2048 tokens, 256 logits rows)", activationBytes(cfg, 2048, 256), acts2048},
		{"activation bytes (8192 tokens, 256 logits rows)", activationBytes(cfg, 8192, 256), 4 * (8192*61440 + 256*(4096+128256+1))},
		{"activation bytes (131072 tokens, 1024 logits rows): past 2^32", activationBytes(cfg, 131072, 1024), 32754368512 + 4*1024},
		{"KV block bytes (16 tokens)", int64(b.BlockBytes()), 2 * 32 * 16 * 1024 * 4},
		{"rope table positions", int64(b.k.ropeN), 131072},
		{"rope table bytes (cos)", int64(b.k.cos.size), 131072 * 64 * 4 * 5 / 4}, // ensure's quarter of headroom
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	n, err := kvBlocks(kvSizing{Total: h200Total, Free: h200Total - used, BlockBytes: int64(b.BlockBytes())})
	if err != nil || n != wantBlocks {
		t.Fatalf("kvBlocks on an H200 = %d, %v; want %d", n, err, wantBlocks)
	}
	before := len(dev.sizes)
	if err := b.allocKV(n); err != nil {
		t.Fatal(err)
	}
	perLayer := uintptr(wantBlocks) * 16 * 1024 * 4 // 1.85 GB: keys (or values) of one layer
	kv := dev.sizes[before:]
	if len(kv) != 64 {
		t.Fatalf("%d KV allocations, want 64 (keys and values of 32 layers)", len(kv))
	}
	for i, s := range kv {
		if s != perLayer {
			t.Fatalf("KV allocation %d: %d bytes, want %d", i, s, perLayer)
		}
	}
	if want := int64(wantBlocks) * 4 << 20; b.info.KVBytes != want || b.NumBlocks() != wantBlocks {
		t.Errorf("KV cache %d blocks, %d bytes; want %d, %d", b.NumBlocks(), b.info.KVBytes, wantBlocks, want)
	}

	// Slots are int32: a cache of more than 2^31 token slots is cut to what they number.
	big, _ := addrBackend(t, cfg, &limitLauncher{})
	if err := big.allocKV(200 << 20); err != nil {
		t.Fatal(err)
	}
	if got, want := big.NumBlocks(), math.MaxInt32/16; got != want {
		t.Errorf("allocKV(200 Mi blocks): %d blocks, want %d", got, want)
	}
}

// TestLlama8BLaunches runs the 8B's forward pass over addrDevice with every launch checked
// against CUDA's limits, for the steps the engine sends at scale: a prompt of 8192 tokens,
// 256 sequences decoding at the last position of the 131072 the model has, a prefill chunk
// beside decodes, and a decode batch of more sequences than a grid's y dimension holds
// (sl_attn_decode's grid is (heads, sequences)).
func TestLlama8BLaunches(t *testing.T) {
	cfg := llama8B(t)
	blocksFor := func(first, n int) []int32 {
		bl := make([]int32, n)
		for i := range bl {
			bl[i] = int32(first + i)
		}
		return bl
	}
	tokens := func(n int) []int32 {
		tok := make([]int32, n)
		for i := range tok {
			tok[i] = int32(1 + i%4000)
		}
		return tok
	}
	decodes := func(seqs, pos, logits int) []model.SeqInput {
		per := pos/16 + 1
		batch := make([]model.SeqInput, seqs)
		for i := range batch {
			batch[i] = model.SeqInput{Tokens: []int32{7}, Pos: pos, Blocks: blocksFor(i*per, per), Logits: i < logits}
		}
		return batch
	}
	for _, c := range []struct {
		name      string
		numBlocks int
		batch     []model.SeqInput
	}{
		{"prefill 8192", 512, []model.SeqInput{{Tokens: tokens(8192), Blocks: blocksFor(0, 512), Logits: true}}},
		{"decode 256 at position 131071", 256 * 8192, decodes(256, 131071, 256)},
		{"prefill 4096 after 8192 beside 64 decodes", 64*33 + 768,
			append(decodes(64, 512, 64), model.SeqInput{Tokens: tokens(4096), Pos: 8192, Blocks: blocksFor(64*33, 768), Logits: true})},
		{"decode 70000 sequences", 70000, decodes(70000, 15, 1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := &limitLauncher{}
			b, _ := addrBackend(t, cfg, l)
			if err := b.allocKV(c.numBlocks); err != nil {
				t.Fatal(err)
			}
			b.w = newWorker()
			defer b.w.stop()
			out, err := b.Forward(c.batch)
			if err != nil {
				t.Fatal(err)
			}
			if want := len(b.k.st.LogitRows); len(out) != want {
				t.Errorf("%d logits rows, want %d", len(out), want)
			}
			// The decode launches cover the step's decoding sequences, in order, each
			// layer: consecutive parts of the sequence list.
			nDecode := len(b.k.st.DecodeSeqs)
			if nDecode > 0 && len(l.decode) < cfg.Layers {
				t.Fatalf("%d sl_attn_decode launches for %d layers", len(l.decode), cfg.Layers)
			}
			var covered int
			for i, d := range l.decode {
				if i%(len(l.decode)/cfg.Layers) == 0 {
					covered = 0
				}
				if want := b.k.decode + driver.DevicePtr(4*covered); d.seqs != want {
					t.Fatalf("decode launch %d reads the sequence list at %#x, want %#x", i, d.seqs, want)
				}
				covered += int(d.nSeqs)
				if (i+1)%(len(l.decode)/cfg.Layers) == 0 && covered != nDecode {
					t.Fatalf("a layer's decode launches cover %d sequences, want %d", covered, nDecode)
				}
			}
			t.Logf("%d launches, %d of them sl_attn_decode", l.launches, len(l.decode))
		})
	}
}
