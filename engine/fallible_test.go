package engine

import (
	"errors"
	"sync"
	"testing"
)

// failingFake is the paged fake with ExecuteErr: it fails the steps it is told to.
type failingFake struct {
	*pagedFake
	mu    sync.Mutex
	fails int // how many of the next steps fail
}

func (f *failingFake) ExecuteErr(batch []Input) ([][]float32, error) {
	f.mu.Lock()
	fail := f.fails > 0
	if fail {
		f.fails--
	}
	f.mu.Unlock()
	if fail {
		return nil, errors.New("cuda: cuLaunchKernel: CUDA_ERROR_ILLEGAL_ADDRESS (700)")
	}
	return f.Execute(batch), nil
}

// TestFailedStepAbortsItsRequests: a step whose executor fails (a GPU backend's device
// error) aborts the step's requests with their KV blocks freed, and the engine keeps
// serving: the next request completes. Before FallibleExecutor there was no way to fail a
// step but a panic, which ended the process.
func TestFailedStepAbortsItsRequests(t *testing.T) {
	ff := &failingFake{pagedFake: newPagedFake(4), fails: 1}
	e := newTestEngine(t, func(c *Config) { c.Executor = ff })
	out := run(t, e.Engine, greedy("the quick brown fox", 8))
	if out.FinishReason != "abort" || out.CompletionTokens != 0 {
		t.Errorf("request of the failed step: finish %q, %d tokens; want abort, 0", out.FinishReason, out.CompletionTokens)
	}
	if st := e.Stats(); st.FreeBlocks != st.NumBlocks {
		t.Errorf("after the failed step: %d of %d blocks free", st.FreeBlocks, st.NumBlocks)
	}
	out = run(t, e.Engine, greedy("the quick brown fox", 8))
	if out.FinishReason != "length" || out.CompletionTokens != 8 {
		t.Errorf("next request: finish %q, %d tokens; want length, 8", out.FinishReason, out.CompletionTokens)
	}
}
