package kvoffload_test

import (
	"context"
	"flag"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"servelab/engine"
	"servelab/engine/cpu"
	"servelab/engine/kv"
	"servelab/engine/kvoffload"
	"servelab/engine/model"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/sim"
)

// The tier benchmarks run on a real model directory (scripts/kv-tiers synthesises the 110m
// preset): go test -run '^$' -bench KVTier ./engine/kvoffload -args -model DIR.
var (
	benchModel  = flag.String("model", "", "model directory for the KV tier benchmarks")
	benchPrefix = flag.Int("prefix-blocks", 16, "prefix length in KV blocks of 16 tokens for the KV tier benchmarks")
	benchDir    = flag.String("disk-dir", "", "directory of the disk tier's file (default: the test's temporary directory)")
)

const benchBlockSize = 16

func benchLoad(b *testing.B) *model.Model {
	b.Helper()
	if *benchModel == "" {
		b.Skip("-model DIR not given (scripts/kv-tiers runs these benchmarks on the 110m preset)")
	}
	m, err := model.Load(*benchModel, cpu.NewPool(runtime.GOMAXPROCS(0)))
	if err != nil {
		b.Fatal(err)
	}
	return m
}

func diskDir(b *testing.B) string {
	if *benchDir != "" {
		return *benchDir
	}
	return b.TempDir()
}

// BenchmarkKVTierBlock times one block's trip on each tier, as the mover makes it during
// an engine step: a store (the accelerator's block copied to the tier) and a load (the
// tier read and the accelerator's block written), per block, cycling over 256 slots so a
// disk tier's reads are not one cached page; "read" is a disk tier's read alone (the
// device, without the KV cache's float conversion). "recompute" is the forward pass over
// the prefix's tokens, per block: what a prefix hit saves.
func BenchmarkKVTierBlock(b *testing.B) {
	m := benchLoad(b)
	const slots = 256
	cache := m.NewKVCache(slots, benchBlockSize)
	bb := cache.BlockBytes()
	b.Logf("%s: %d layers, dim %d; a KV block of %d tokens is %d bytes", *benchModel, m.Config.Layers, m.Config.Dim, benchBlockSize, bb)
	// What the simulator charges a load of one such block (one block alone: latency, the
	// per-block latency and bytes over bandwidth), for comparison with the measured loads.
	for _, name := range slices.Sorted(maps.Keys(sim.KVTierPresets)) {
		p := sim.KVTierPresets[name]
		ns := (p.LatencyUs+p.BlockLatencyUs)*1e3 + float64(bb)/(p.BandwidthGBps*1e9)*1e9
		b.Logf("sim preset %s: %g GB/s, %g us + %g us a block: %.0f ns/block", name, p.BandwidthGBps, p.LatencyUs, p.BlockLatencyUs, ns)
	}
	tiers := []struct {
		name  string
		store func(b *testing.B) kvoffload.Store
	}{
		{"cpu", func(b *testing.B) kvoffload.Store {
			s, err := kvoffload.NewHostStore(slots, bb)
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
		{"disk-direct", func(b *testing.B) kvoffload.Store {
			s, err := kvoffload.NewDiskStore(kvoffload.DiskOptions{Dir: diskDir(b), Slots: slots, BlockBytes: bb, Direct: true})
			if err != nil {
				b.Fatal(err)
			}
			if !s.Direct() {
				b.Skip("the file system refuses O_DIRECT")
			}
			return s
		}},
		{"disk-buffered", func(b *testing.B) kvoffload.Store {
			s, err := kvoffload.NewDiskStore(kvoffload.DiskOptions{Dir: diskDir(b), Slots: slots, BlockBytes: bb})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
	}
	for _, tc := range tiers {
		for _, op := range []string{"store", "load", "read"} {
			if op == "read" && tc.name == "cpu" {
				continue
			}
			b.Run(tc.name+"/"+op, func(b *testing.B) {
				s := tc.store(b)
				mv, err := kvoffload.NewMover(cache, []kvoffload.Store{s})
				if err != nil {
					b.Fatal(err)
				}
				defer mv.Close()
				for i := range slots {
					mv.Offload(int32(i), int32(i))
				}
				b.SetBytes(int64(bb))
				buf := kvoffload.NewBuffer(bb)
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					slot := int32(i % slots)
					switch op {
					case "read":
						if err := s.Read(slot, buf); err != nil {
							b.Fatal(err)
						}
					case "store":
						mv.Offload(slot, slot)
					default:
						// What the manager does for a hit: the slot into staging, then into
						// the block it allocated.
						mv.Fetch(0, slot, 0)
						mv.Load(0, 0, slot)
					}
				}
			})
		}
	}
	b.Run("recompute", func(b *testing.B) {
		n := *benchPrefix * benchBlockSize
		run := m.NewRunner(cache)
		rng := rand.New(rand.NewPCG(1, 2))
		tokens := make([]int32, n)
		for i := range tokens {
			tokens[i] = int32(3 + rng.IntN(min(m.Config.Vocab, 4096)-3))
		}
		blocks := make([]int32, *benchPrefix)
		for i := range blocks {
			blocks[i] = int32(i)
		}
		in := []model.SeqInput{{Tokens: tokens, Blocks: blocks, Logits: true}}
		start := time.Now()
		for b.Loop() {
			run.Forward(in)
		}
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N)/float64(*benchPrefix), "ns/block")
	})
}

// BenchmarkKVTierPrefixHit times a request's first token (ns/op: its TTFT, the engine
// otherwise idle) when its prompt's prefix of -prefix-blocks blocks is served from each
// tier, against recomputing it. Two prompts of that prefix plus 15 tokens alternate on a
// cache with room for one, so each evicts the other's prefix: to the tier, from which the
// next request loads it back, or, without tiers, out of the cache. "gpu" is the same
// request on a cache holding both prefixes.
func BenchmarkKVTierPrefixHit(b *testing.B) {
	m := benchLoad(b)
	pb := *benchPrefix
	rng := rand.New(rand.NewPCG(3, 4))
	prompt := func() []int32 {
		out := make([]int32, pb*benchBlockSize+15)
		for i := range out {
			out[i] = int32(3 + rng.IntN(min(m.Config.Vocab, 4096)-3))
		}
		return out
	}
	prompts := [2][]int32{prompt(), prompt()}
	for _, tc := range []struct {
		name   string
		blocks int
		tier   string
	}{
		{"gpu", 4 * (pb + 1), ""},
		{"cpu", pb + 1, kv.MediumCPU},
		{"disk", pb + 1, kv.MediumDisk},
		{"recompute", pb + 1, ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cache := m.NewKVCache(tc.blocks, benchBlockSize)
			bp, err := batch.ParseEngineSpec("vllm", 0, 0, policies.Env{BlockSize: benchBlockSize})
			if err != nil {
				b.Fatal(err)
			}
			cfg := engine.Config{
				ModelName: "bench", Executor: &executor{runner: m.NewRunner(cache)},
				NewDecoder:  func(bool) engine.TextDecoder { return idDecoder{} },
				MaxModelLen: tc.blocks * benchBlockSize, VocabSize: m.Config.Vocab,
				NumBlocks: tc.blocks, BlockSize: benchBlockSize, EnablePrefixCaching: true, Batch: bp,
			}
			var mv *kvoffload.Mover
			if tc.tier != "" {
				var s kvoffload.Store
				if tc.tier == kv.MediumCPU {
					s, err = kvoffload.NewHostStore(4*pb, cache.BlockBytes())
				} else {
					var d *kvoffload.DiskStore
					d, err = kvoffload.NewDiskStore(kvoffload.DiskOptions{Dir: diskDir(b), Slots: 4 * pb, BlockBytes: cache.BlockBytes(), Direct: true})
					if err == nil && !d.Direct() {
						b.Logf("the file system refuses O_DIRECT: buffered I/O")
					}
					s = d
				}
				if err != nil {
					b.Fatal(err)
				}
				if mv, err = kvoffload.NewMover(cache, []kvoffload.Store{s}); err != nil {
					b.Fatal(err)
				}
				defer mv.Close()
				cfg.KVTiers = []kv.TierConfig{{Medium: tc.tier, Blocks: 4 * pb}}
				cfg.KVMover = mv
			}
			e, err := engine.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer e.Shutdown(context.Background())
			ask := func(p []int32) engine.Output {
				ctx := context.Background()
				s, err := e.Submit(ctx, engine.Request{Prompt: p, Sampling: engine.SamplingParams{MaxTokens: 1, IgnoreEOS: true}})
				if err != nil {
					b.Fatal(err)
				}
				out, err := s.Wait(ctx)
				if err != nil {
					b.Fatal(err)
				}
				return out
			}
			// Warm up: both prefixes computed once (and, on the small caches, the first
			// one pushed out by the second).
			ask(prompts[0])
			ask(prompts[1])
			cached := 0
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				cached += ask(prompts[i%2]).CachedTokens
			}
			b.StopTimer()
			b.ReportMetric(float64(cached)/float64(b.N), "cached-tokens/op")
			if err := e.Shutdown(context.Background()); err != nil {
				b.Fatal(err)
			}
			if mv != nil {
				c := mv.Counters()[0]
				if c.Loaded > 0 {
					b.ReportMetric(c.LoadSeconds/float64(c.Loaded)*1e9, "load-ns/block")
				}
			}
			want := map[string]int{"gpu": pb * benchBlockSize, "cpu": pb * benchBlockSize, "disk": pb * benchBlockSize, "recompute": 0}[tc.name]
			if cached != want*b.N {
				b.Fatalf("%d prompt tokens cached over %d requests, want %d each: the benchmark does not measure what it says", cached, b.N, want)
			}
		})
	}
}
