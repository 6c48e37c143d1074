package engine

import (
	"errors"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/engine/sampling"
)

// tokenFake is the paged fake as a TokenExecutor: for a Greedy row it returns nil logits
// and the upper-case letter of the row's argmax (a token sampling.Argmax of the row never
// is), so an output the engine sampled from the logits reads lower case and one it took
// from the executor's tokens upper case. It counts the rows of each kind and the inputs
// that break Greedy's contract (Greedy without Logits).
type tokenFake struct {
	*pagedFake
	mu                    sync.Mutex
	greedyRows, logitRows int
	greedyNoLogits        int
	fails                 int // how many of the next steps fail
	tokens                []int32
}

func (f *tokenFake) ExecuteTokens(batch []Input) ([][]float32, []int32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fails > 0 {
		f.fails--
		return nil, nil, errors.New("cuda: cuLaunchKernel: CUDA_ERROR_ILLEGAL_ADDRESS (700)")
	}
	rows := f.Execute(batch)
	f.tokens = f.tokens[:0]
	row := 0
	for _, in := range batch {
		if in.Greedy && !in.Logits {
			f.greedyNoLogits++
		}
		if !in.Logits {
			continue
		}
		tok := int32(-1) // never read
		if in.Greedy {
			tok = upper(sampling.Argmax(rows[row]))
			rows[row] = nil
			f.greedyRows++
		} else {
			f.logitRows++
		}
		f.tokens = append(f.tokens, tok)
		row++
	}
	return rows, f.tokens, nil
}

func upper(tok int32) int32 {
	if tok >= 'a' && tok <= 'z' {
		return tok - 'a' + 'A'
	}
	return tok
}

// greedySeen is the paged fake recording whether any input came with Greedy set.
type greedySeen struct {
	*pagedFake
	mu     sync.Mutex
	greedy int
}

func (f *greedySeen) Execute(batch []Input) [][]float32 {
	f.mu.Lock()
	for _, in := range batch {
		if in.Greedy {
			f.greedy++
		}
	}
	f.mu.Unlock()
	return f.pagedFake.Execute(batch)
}

// sampled is a request that samples at a low temperature with its own seed: the fake's
// one-hot rows make it pick the hot token all but certainly, yet it goes through the
// sampler's draw, not Argmax.
func sampled(prompt string, maxTokens int) Request {
	r := greedy(prompt, maxTokens)
	r.Sampling.Params = sampling.Params{Temperature: 0.05, Seed: 7, Seeded: true}
	return r
}

// TestTokenExecutorGreedyRows: with a TokenExecutor, a greedy request's rows come with
// Greedy set and its tokens are the executor's (upper case here), while a sampled
// request in the same batches gets its logits rows and samples them as before (its text
// equals the one an ordinary executor gives); an executor without the interface never
// sees Greedy. A failed ExecuteTokens aborts the step's requests as a failed ExecuteErr
// does.
func TestTokenExecutorGreedyRows(t *testing.T) {
	const n = 12
	plain := &greedySeen{pagedFake: newPagedFake(4)}
	pe := newTestEngine(t, func(c *Config) { c.Executor = plain })
	wantSampled := run(t, pe.Engine, sampled("jumps over", n)).Text
	wantGreedy := run(t, pe.Engine, greedy("the quick brown fox", n)).Text
	if plain.greedy != 0 {
		t.Errorf("an executor without ExecuteTokens got %d inputs with Greedy set", plain.greedy)
	}

	tf := &tokenFake{pagedFake: newPagedFake(4)}
	e := newTestEngine(t, func(c *Config) { c.Executor = tf })
	reqs := []Request{greedy("the quick brown fox", n), sampled("jumps over", n)}
	got := make([]Output, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = run(t, e.Engine, r)
		}()
	}
	wg.Wait()
	for _, text := range []string{got[0].Text, got[1].Text, wantSampled, wantGreedy} {
		if len(text) != n {
			t.Fatalf("texts %q, %q, %q, %q; want %d tokens each", got[0].Text, got[1].Text, wantSampled, wantGreedy, n)
		}
	}
	for i := range got[0].Text {
		if c := got[0].Text[i]; c != ' ' && (c < 'A' || c > 'Z') {
			t.Errorf("greedy request's text %q: byte %d is not the executor's token (upper case)", got[0].Text, i)
			break
		}
	}
	// Each greedy token is the upper case of the argmax of the row for the same context,
	// so its first token is the ordinary engine's first token in upper case.
	if g, w := got[0].Text[0], byte(upper(int32(wantGreedy[0]))); g != w {
		t.Errorf("greedy request's first token %q; want %q, the executor's token for the row", g, w)
	}
	if d := cmp.Diff(wantSampled, got[1].Text); d != "" {
		t.Errorf("sampled request's text through ExecuteTokens (-ordinary executor +token executor):\n%s", d)
	}
	tf.mu.Lock()
	if tf.greedyRows != n || tf.logitRows != n || tf.greedyNoLogits != 0 {
		t.Errorf("%d greedy rows, %d logits rows, %d Greedy inputs without Logits; want %d, %d, 0", tf.greedyRows, tf.logitRows, tf.greedyNoLogits, n, n)
	}
	tf.fails = 1
	tf.mu.Unlock()
	if out := run(t, e.Engine, greedy("lazy dogs", 4)); out.FinishReason != "abort" || out.CompletionTokens != 0 {
		t.Errorf("request of a failed ExecuteTokens: finish %q, %d tokens; want abort, 0", out.FinishReason, out.CompletionTokens)
	}
	if out := run(t, e.Engine, greedy("lazy dogs", 4)); out.FinishReason != "length" || out.CompletionTokens != 4 {
		t.Errorf("next request: finish %q, %d tokens; want length, 4", out.FinishReason, out.CompletionTokens)
	}
}
