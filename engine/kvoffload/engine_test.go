package kvoffload_test

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"servelab/engine"
	"servelab/engine/cpu"
	"servelab/engine/kv"
	"servelab/engine/kvoffload"
	"servelab/engine/model"
	"servelab/engine/modelfile"
	"servelab/policies"
	"servelab/policies/batch"
)

func loadTiny(t *testing.T) *model.Model {
	t.Helper()
	spec, err := modelfile.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	// Random weights at transformers' initial scale attend almost uniformly and leave the
	// residual stream to the current token, so the greedy tokens barely depend on the KV
	// cache; scaled up, attention is sharp and the values carry the context, and a block
	// that came back wrong changes the tokens.
	w := modelfile.RandomWeights(spec, 5)
	for _, ws := range [][][]float32{w.Wq, w.Wk, w.Wv, w.Wo} {
		for _, layer := range ws {
			for i := range layer {
				layer[i] *= 25
			}
		}
	}
	dir := filepath.Join(t.TempDir(), "tiny")
	if err := modelfile.Write(dir, spec, w); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, cpu.NewPool(1))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type executor struct {
	runner *model.Runner
	in     []model.SeqInput
}

func (x *executor) Execute(batch []engine.Input) [][]float32 {
	x.in = x.in[:0]
	for _, b := range batch {
		x.in = append(x.in, model.SeqInput(b))
	}
	return x.runner.Forward(x.in)
}

type idDecoder struct{}

func (idDecoder) Add(int32) string { return "" }
func (idDecoder) Flush() string    { return "" }

const blockSize = 4

// newEngine runs the tiny model over numBlocks KV blocks, with the tiers' stores when
// given (top down; nil: no tiers).
func newEngine(t *testing.T, m *model.Model, numBlocks int, tiers []kv.TierConfig, stores func(blockBytes int) []kvoffload.Store) (*engine.Engine, *kvoffload.Mover, *prometheus.Registry) {
	t.Helper()
	cache := m.NewKVCache(numBlocks, blockSize)
	bp, err := batch.ParseEngineSpec("vllm", 0, 0, policies.Env{BlockSize: blockSize})
	if err != nil {
		t.Fatal(err)
	}
	cfg := engine.Config{
		ModelName: "tiny", Executor: &executor{runner: m.NewRunner(cache)},
		NewDecoder:  func(bool) engine.TextDecoder { return idDecoder{} },
		MaxModelLen: min(numBlocks*blockSize, 64), VocabSize: m.Config.Vocab,
		NumBlocks: numBlocks, BlockSize: blockSize, EnablePrefixCaching: true, Batch: bp,
	}
	var mv *kvoffload.Mover
	if tiers != nil {
		if mv, err = kvoffload.NewMover(cache, stores(cache.BlockBytes())); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mv.Close() })
		cfg.KVTiers, cfg.KVMover = tiers, mv
	}
	reg := prometheus.NewRegistry()
	cfg.Metrics = engine.NewMetrics(reg, "tiny", cfg.MaxModelLen)
	if mv != nil {
		mv.OnLoad = cfg.Metrics.ObserveKVLoad
	}
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Shutdown(context.Background()) })
	return e, mv, reg
}

func generate(t *testing.T, e *engine.Engine, prompt []int32) engine.Output {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := e.Submit(ctx, engine.Request{Prompt: prompt, Sampling: engine.SamplingParams{MaxTokens: 8, IgnoreEOS: true}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTieredEngineEqualsBigCache serves the same prompts, one at a time, greedy, with an
// engine whose 10-block cache sends every prefix down to a 3-block CPU tier and on to a
// disk tier before it comes back, and with an engine whose cache holds everything: the
// generated tokens are identical, so the KV contents that came back from host memory and
// from the file are the ones that left. The prompts share prefixes, so the tiered engine
// serves them from the lower tiers (checked), not by recomputing.
func TestTieredEngineEqualsBigCache(t *testing.T) {
	m := loadTiny(t)
	rng := rand.New(rand.NewPCG(9, 9))
	tokens := func(n int) []int32 {
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(3 + rng.IntN(m.Config.Vocab-3))
		}
		return out
	}
	shared := tokens(16) // 4 blocks
	withPrefix := func(n int) []int32 { return append(append([]int32(nil), shared...), tokens(n)...) }
	a := withPrefix(5)
	var prompts [][]int32
	// A short prompt evicts a few of a's blocks, into the CPU tier, where a finds them.
	prompts = append(prompts, a, tokens(17), a)
	for range 3 {
		prompts = append(prompts, tokens(21)) // evicts what came before, down the tiers
	}
	prompts = append(prompts, withPrefix(7), a)
	for range 4 {
		prompts = append(prompts, tokens(21))
	}
	prompts = append(prompts, a, tokens(17), withPrefix(3))

	big, _, _ := newEngine(t, m, 256, nil, nil)
	dir := t.TempDir()
	tiered, mv, reg := newEngine(t, m, 10, []kv.TierConfig{{Medium: kv.MediumCPU, Blocks: 3}, {Medium: kv.MediumDisk, Blocks: 40}},
		func(blockBytes int) []kvoffload.Store {
			host, err := kvoffload.NewHostStore(3, blockBytes)
			if err != nil {
				t.Fatal(err)
			}
			disk, err := kvoffload.NewDiskStore(kvoffload.DiskOptions{Dir: dir, Slots: 40, BlockBytes: blockBytes, Direct: true})
			if err != nil {
				t.Fatal(err)
			}
			return []kvoffload.Store{host, disk}
		})
	var want, got [][]int32
	cached := 0
	for _, p := range prompts {
		want = append(want, generate(t, big, p).TokenIDs)
		out := generate(t, tiered, p)
		got = append(got, out.TokenIDs)
		cached += out.CachedTokens
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tokens with tiers differ from the big cache's (-big +tiered):\n%s", diff)
	}
	// Stopped, the engine has published its last step's counters, and the mover is no
	// longer used by its loop.
	if err := tiered.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := tiered.Stats().KVTiers
	if len(st) != 3 || st[1].Loaded == 0 || st[2].Loaded == 0 || st[2].Offloaded == 0 {
		t.Fatalf("tier stats %+v: the prompts did not go through both tiers and back", st)
	}
	counters := mv.Counters()
	for i, c := range counters {
		if c.Loaded != st[1+i].Loaded || c.Stored != st[1+i].Offloaded {
			t.Errorf("%s: the mover moved %d in, %d out; the block manager counts %d, %d", c.Medium, c.Stored, c.Loaded, st[1+i].Offloaded, st[1+i].Loaded)
		}
	}
	checkTierMetrics(t, reg, st)
	if cached == 0 {
		t.Error("no prompt token was served from the cache")
	}
	t.Logf("tiers %+v; mover %+v; %d prompt tokens cached", st, counters, cached)
}

// checkTierMetrics reads the tier metrics from /metrics' registry: the counters are the
// block manager's, and the load-time histogram observed every loaded block.
func checkTierMetrics(t *testing.T, reg *prometheus.Registry, st []kv.TierStats) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "servelab:kv_tier_") {
			continue
		}
		for _, m := range f.GetMetric() {
			medium := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "medium" {
					medium = l.GetValue()
				}
			}
			key := f.GetName() + "{" + medium + "}"
			switch {
			case m.Counter != nil:
				got[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				got[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	want := map[string]float64{}
	for i, s := range st {
		want["servelab:kv_tier_blocks{"+s.Medium+"}"] = float64(s.Blocks)
		want["servelab:kv_tier_hit_blocks_total{"+s.Medium+"}"] = float64(s.HitBlocks)
		if i > 0 {
			want["servelab:kv_tier_offloaded_blocks_total{"+s.Medium+"}"] = float64(s.Offloaded)
			want["servelab:kv_tier_loaded_blocks_total{"+s.Medium+"}"] = float64(s.Loaded)
			want["servelab:kv_tier_load_seconds{"+s.Medium+"}_count"] = float64(s.Loaded)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tier metrics (-want +got):\n%s", diff)
	}
}
