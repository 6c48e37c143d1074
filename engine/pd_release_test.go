package engine

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pagedFakeIO is pagedFake with KV block reads and writes (engine.KVBlockIO): a block is
// its slots' tokens, 4 bytes each, so a remote prefill's pull fills the slots a local
// prefill would have.
type pagedFakeIO struct{ *pagedFake }

func (f pagedFakeIO) BlockBytes() int { return 4 * f.blockSize }

func (f pagedFakeIO) ReadBlock(b int32, dst []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.blockSize {
		binary.LittleEndian.PutUint32(dst[4*i:], uint32(f.slots[[2]int32{b, int32(i)}]))
	}
}

func (f pagedFakeIO) WriteBlock(b int32, src []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.blockSize {
		f.slots[[2]int32{b, int32(i)}] = int32(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

// TestRemotePrefillsHoldingEveryBlock: four disaggregated requests whose pulls land
// together hold all 8 blocks of a decode engine, and each needs one more for the rest of
// its prompt. Nothing could be scheduled or preempted, and the engine loop waited for
// good (the router's decode legs with it: TestFidelityPDAndTiers hung under load). Now
// one gives its pulled blocks back and recomputes, and every request completes with the
// output a local prefill gives.
func TestRemotePrefillsHoldingEveryBlock(t *testing.T) {
	const n = 4
	prompts := []string{"abcdefghij", "klmnopqrst", "uvwxyzabcd", "efghijklmn"} // 2 full blocks of 4, and 2 tokens
	local := newTestEngine(t, nil)
	var want []string
	for _, p := range prompts {
		want = append(want, run(t, local.Engine, greedy(p, 3)).Text)
	}

	var fake *pagedFake
	e := newTestEngine(t, func(c *Config) {
		fake = c.Executor.(*pagedFake)
		c.Executor = pagedFakeIO{fake}
		c.NumBlocks, c.MaxModelLen = 8, 32
	})
	var started sync.WaitGroup
	started.Add(n)
	allStarted := make(chan struct{})
	go func() { started.Wait(); close(allStarted) }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	streams := make([]*Stream, n)
	for i, p := range prompts {
		prompt := encode(p)
		req := greedy(p, 3)
		req.RemotePrefill = &RemotePrefill{Blocks: 2, Fetch: func(ctx context.Context, size int, put func(int, []byte) error) error {
			started.Done()
			select { // every pull holds its blocks before any lands
			case <-allStarted:
			case <-ctx.Done():
				return ctx.Err()
			}
			for b := range 2 {
				data := make([]byte, size)
				for j := range 4 {
					binary.LittleEndian.PutUint32(data[4*j:], uint32(prompt[4*b+j]))
				}
				if err := put(b, data); err != nil {
					return err
				}
			}
			return nil
		}}
		s, err := e.Submit(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		streams[i] = s
	}
	var got []string
	for i, s := range streams {
		out, err := s.Wait(ctx)
		if err != nil {
			t.Fatalf("request %d: %v (the engine stalled: %+v)", i, err, e.Stats())
		}
		got = append(got, out.Text)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outputs (-local prefill +remote prefill):\n%s", diff)
	}
	waitEmpty(t, e.Engine)
}
