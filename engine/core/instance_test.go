package core

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/engine/kv"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/serving"
)

func newInstance(t testing.TB, batchSpec, evictSpec string, blocks int, caching bool) *Instance {
	t.Helper()
	env := policies.Env{Seed: 1, BlockSize: 16}
	b, _, err := batch.Registry.Parse(batchSpec, env)
	if err != nil {
		t.Fatal(err)
	}
	e, _, err := evict.Registry.Parse(evictSpec, env)
	if err != nil {
		t.Fatal(err)
	}
	in, err := New(Config{Batch: b, KV: kv.Config{NumBlocks: blocks, BlockSize: 16, EnablePrefixCaching: caching, Evict: e}})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// drain runs steps of one time unit each until the instance is idle and returns the
// finished sequences in finishing order.
func drain(t testing.TB, in *Instance, now float64) ([]*serving.Seq, float64) {
	t.Helper()
	var done []*serving.Seq
	for steps := 0; !in.Idle(); steps++ {
		if steps > 1_000_000 {
			t.Fatal("instance does not drain")
		}
		step := in.Plan(now)
		if step.Empty() {
			t.Fatalf("instance has %d waiting, %d running but plans an empty step", in.NumWaiting(), in.NumRunning())
		}
		now++
		done = append(done, in.Complete(step, now)...)
	}
	return done, now
}

func request(id uint64, prompt, output int, hashes []uint64) *serving.Request {
	return &serving.Request{ID: id, PromptTokens: prompt, MaxTokens: output, BlockHashes: hashes}
}

func TestLifecycleOfOneRequest(t *testing.T) {
	in := newInstance(t, "vllm", "lru", 64, true)
	s := in.Add(request(1, 40, 3, nil))
	type stepView struct{ Tokens, Context, Prefill, Decode int }
	var steps []stepView
	now := 10.0
	for !in.Idle() {
		step := in.Plan(now)
		steps = append(steps, stepView{step.Seqs[0].NumTokens, step.Seqs[0].Context, step.Shape.PrefillTokens, step.Shape.DecodeSeqs})
		now += 0.5
		in.Complete(step, now)
	}
	want := []stepView{{40, 0, 40, 0}, {1, 40, 0, 1}, {1, 41, 0, 1}}
	if diff := cmp.Diff(want, steps); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	got := []float64{s.FirstScheduled, s.FirstToken, s.Finish}
	if diff := cmp.Diff([]float64{10, 10.5, 11.5}, got); diff != "" {
		t.Errorf("scheduled, first token, finish (-want +got):\n%s", diff)
	}
	if s.Status != serving.SeqFinished || s.NumOutput != 3 {
		t.Errorf("status %v after %d tokens, want finished after 3", s.Status, s.NumOutput)
	}
	if free := in.KV().NumFree(); free != 64 {
		t.Errorf("%d free blocks after the request finished, want 64", free)
	}
}

func TestPrefixCacheHit(t *testing.T) {
	in := newInstance(t, "vllm", "lru", 64, true)
	tokens := make([]int32, 64)
	for i := range tokens {
		tokens[i] = int32(i)
	}
	hashes := serving.TokenBlockHashes(tokens, 16) // 4 full blocks
	first := in.Add(request(1, 64, 2, hashes))
	drain(t, in, 0)
	second := in.Add(request(2, 64, 2, hashes))
	step := in.Plan(100)
	// A full hit still recomputes the last token: 3 blocks of 4 are reused.
	if got := step.Seqs[0].NumTokens; got != 16 {
		t.Errorf("second request computes %d prompt tokens, want 16", got)
	}
	in.Complete(step, 101)
	drain(t, in, 101)
	if first.NumCachedPrompt != 0 || second.NumCachedPrompt != 48 {
		t.Errorf("cached prompt tokens = %d, %d; want 0, 48", first.NumCachedPrompt, second.NumCachedPrompt)
	}
	st := in.Stats()
	if st.PrefixCacheQueries != 128 || st.PrefixCacheHits != 48 {
		t.Errorf("prefix cache queries %d hits %d, want 128 and 48", st.PrefixCacheQueries, st.PrefixCacheHits)
	}
}

func TestPreemptionUnderPressureCompletesEverything(t *testing.T) {
	for _, spec := range []string{"vllm", "priority", "static"} {
		t.Run(spec, func(t *testing.T) {
			// 12 blocks of 16 tokens: three 60-token sequences cannot all grow to 100.
			in := newInstance(t, spec+":max_num_batched_tokens=64", "lru", 12, true)
			for i := range 6 {
				in.Add(&serving.Request{ID: uint64(i), PromptTokens: 60, MaxTokens: 40, Priority: i % 3})
			}
			done, _ := drain(t, in, 0)
			if len(done) != 6 {
				t.Fatalf("%d of 6 requests finished", len(done))
			}
			for _, s := range done {
				if s.NumOutput != 40 {
					t.Errorf("request %d produced %d tokens, want 40", s.Req.ID, s.NumOutput)
				}
			}
			if spec == "vllm" && in.Stats().Preemptions == 0 {
				t.Error("no preemption under memory pressure")
			}
			if free := in.KV().NumFree(); free != 12 {
				t.Errorf("%d of 12 blocks free after all finished", free)
			}
		})
	}
}

// TestRandomWorkloadsDrain runs random arrivals under every batch and evict policy and
// checks that every request completes with its exact output length and that every block
// comes back.
func TestRandomWorkloadsDrain(t *testing.T) {
	for _, b := range batch.Registry.Names() {
		for _, e := range evict.Registry.Names() {
			t.Run(b+"/"+e, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(7, 11))
				in := newInstance(t, b+":max_num_batched_tokens=128,max_num_seqs=8", e, 40, true)
				prefixes := [][]uint64{
					serving.TraceBlockHashes([]int64{1, 2, 3}, 16, 48, 16, 0),
					serving.TraceBlockHashes([]int64{1, 2, 9}, 16, 48, 16, 0),
				}
				var want, got int
				now := 0.0
				for id := range 300 {
					prompt := 1 + rng.IntN(200)
					output := 1 + rng.IntN(60)
					req := &serving.Request{ID: uint64(id), PromptTokens: prompt, MaxTokens: output, Priority: rng.IntN(3)}
					if p := prefixes[rng.IntN(2)]; prompt >= 48 {
						req.BlockHashes = append(append([]uint64(nil), p...), serving.TraceBlockHashes(nil, 0, prompt, 16, uint64(id))[3:]...)
					}
					in.Add(req)
					want += output
					for range rng.IntN(4) {
						if in.Idle() {
							break
						}
						step := in.Plan(now)
						now++
						for _, s := range in.Complete(step, now) {
							got += s.NumOutput
						}
					}
				}
				done, _ := drain(t, in, now)
				for _, s := range done {
					got += s.NumOutput
				}
				if got != want {
					t.Errorf("produced %d tokens, want %d", got, want)
				}
				if free := in.KV().NumFree(); free != 40 {
					t.Errorf("%d of 40 blocks free after all finished", free)
				}
			})
		}
	}
}

func TestAbortFreesBlocks(t *testing.T) {
	in := newInstance(t, "vllm", "lru", 32, true)
	a := in.Add(request(1, 100, 50, nil))
	b := in.Add(request(2, 100, 50, nil))
	step := in.Plan(0)
	in.Complete(step, 1)
	c := in.Add(request(3, 100, 50, nil))
	for _, s := range []*serving.Seq{a, c, b} {
		in.Abort(s)
		if s.Status != serving.SeqAborted {
			t.Errorf("request %d status %v after abort", s.Req.ID, s.Status)
		}
	}
	if !in.Idle() || in.KV().NumFree() != 32 {
		t.Errorf("after aborting everything: idle %v, %d of 32 blocks free", in.Idle(), in.KV().NumFree())
	}
}

// BenchmarkDecodeStep measures Plan+Complete per step with batchSize sequences decoding;
// a finished sequence is replaced at once, so a few steps also carry a 128-token prefill.
func BenchmarkDecodeStep(b *testing.B) {
	for _, batchSize := range []int{1, 32, 256} {
		b.Run(fmt.Sprint("batch=", batchSize), func(b *testing.B) {
			in := newInstance(b, "vllm:max_num_seqs=1024,max_num_batched_tokens=8192", "lru", 1<<16, true)
			next := uint64(0)
			add := func() {
				in.Add(request(next, 128, 512, nil))
				next++
			}
			for range batchSize {
				add()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				for range in.Complete(in.Plan(float64(i)), float64(i+1)) {
					add()
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batchSize), "ns/token")
		})
	}
}

// TestPrefixLookupIsNotReusedAcrossSteps guards against planning a waiting request with a
// prefix-cache lookup from an earlier step: in between, other sequences' allocations can
// evict the blocks that lookup found.
func TestPrefixLookupIsNotReusedAcrossSteps(t *testing.T) {
	in := newInstance(t, "vllm", "lru", 10, true)
	shared := serving.TraceBlockHashes([]int64{1, 2, 3}, 16, 48, 16, 0)
	in.Add(request(1, 48, 1, shared))
	drain(t, in, 0) // its three prompt blocks stay cached, free

	// Y fills nine blocks, evicting all but the first shared block; Z shares that block but
	// does not fit yet, so its lookup of one cached block is left unused.
	in.Add(request(2, 144, 2, nil))
	z := request(3, 64, 1, append(append([]uint64(nil), shared...), serving.TraceBlockHashes(nil, 0, 64, 16, 3)[3]))
	in.Add(z)
	step := in.Plan(1)
	if len(step.Seqs) != 1 {
		t.Fatalf("first step runs %d sequences, want only the 144-token prompt", len(step.Seqs))
	}
	in.Complete(step, 2)
	// Y's first decode token needs a tenth block: the last free one, the shared block.
	step = in.Plan(2)
	in.Complete(step, 3)
	if got := in.KV().CachedPrefixBlocks(z.BlockHashes); got != 0 {
		t.Fatalf("the shared block is still cached (%d blocks); the scenario needs it evicted", got)
	}
	drain(t, in, 3)
	if free := in.KV().NumFree(); free != 10 {
		t.Errorf("%d of 10 blocks free after all finished", free)
	}
}
