package engine

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSubmitRefusesHostileSizes sends sizes a hostile client could choose straight to
// Submit: the engine must refuse them itself, not rely on the HTTP server. Whatever it
// accepts must never generate more than max_model_len minus the prompt.
func TestSubmitRefusesHostileSizes(t *testing.T) {
	e := newTestEngine(t, nil)
	const maxModelLen = 256
	prompt := encode("hello") // 5 tokens
	rest := maxModelLen - len(prompt)
	sp := func(mutate func(*SamplingParams)) SamplingParams {
		p := SamplingParams{MaxTokens: 4, IgnoreEOS: true}
		mutate(&p)
		return p
	}
	tests := []struct {
		name   string
		prompt []int32
		sp     SamplingParams
		param  string // "" when the request is valid
	}{
		{"max_tokens MaxInt", prompt, sp(func(p *SamplingParams) { p.MaxTokens = math.MaxInt }), "max_tokens"},
		{"max_tokens wraps to MinInt", prompt, sp(func(p *SamplingParams) { p.MaxTokens = math.MaxInt - len(prompt) + 1 }), "max_tokens"},
		{"max_tokens MinInt", prompt, sp(func(p *SamplingParams) { p.MaxTokens = math.MinInt }), "max_tokens"},
		{"max_tokens one past the context", prompt, sp(func(p *SamplingParams) { p.MaxTokens = rest + 1 }), "max_tokens"},
		{"max_tokens the whole context", prompt, sp(func(p *SamplingParams) { p.MaxTokens = rest }), ""},
		{"min_tokens MaxInt", prompt, sp(func(p *SamplingParams) { p.MinTokens = math.MaxInt }), "min_tokens"},
		{"min_tokens MinInt", prompt, sp(func(p *SamplingParams) { p.MinTokens = math.MinInt }), "min_tokens"},
		{"min_tokens and max_tokens MaxInt", prompt, sp(func(p *SamplingParams) { p.MinTokens, p.MaxTokens = math.MaxInt, math.MaxInt }), "max_tokens"},
		{"prompt fills the context", encode(strings.Repeat("x", maxModelLen)), sp(func(*SamplingParams) {}), "prompt"},
		{"prompt id MaxInt32", []int32{math.MaxInt32}, sp(func(*SamplingParams) {}), "prompt"},
		{"prompt id MinInt32", []int32{math.MinInt32}, sp(func(*SamplingParams) {}), "prompt"},
		{"top_k MaxInt", prompt, sp(func(p *SamplingParams) { p.TopK = math.MaxInt }), ""},
		{"top_k MinInt", prompt, sp(func(p *SamplingParams) { p.TopK = math.MinInt }), "top_k"},
		{"seed MaxUint64", prompt, sp(func(p *SamplingParams) { p.Seed, p.Seeded = math.MaxUint64, true }), ""},
		{"too many stop strings", prompt, sp(func(p *SamplingParams) { p.Stop = slices.Repeat([]string{"zz"}, MaxStopStrings+1) }), "stop"},
		{"the most stop strings", prompt, sp(func(p *SamplingParams) { p.Stop = slices.Repeat([]string{"zz"}, MaxStopStrings) }), ""},
		{"stop string too long", prompt, sp(func(p *SamplingParams) { p.Stop = []string{strings.Repeat("z", MaxStopBytes+1)} }), "stop"},
		{"too many stop token ids", prompt, sp(func(p *SamplingParams) { p.StopTokenIDs = make([]int32, MaxStopTokenIDs+1) }), "stop_token_ids"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := e.Submit(ctx, Request{Prompt: tc.prompt, Sampling: tc.sp})
			var inv *InvalidRequestError
			if tc.param != "" {
				if s != nil {
					s.Abort()
				}
				if !errors.As(err, &inv) || inv.Param != tc.param {
					t.Fatalf("Submit: %v, want an invalid %s", err, tc.param)
				}
				return
			}
			if err != nil {
				t.Fatalf("Submit: %v", err)
			}
			out, err := s.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if limit := maxModelLen - len(tc.prompt); out.CompletionTokens > limit || len(out.TokenIDs) > limit {
				t.Errorf("generated %d tokens (%d ids), more than the context leaves (%d)", out.CompletionTokens, len(out.TokenIDs), limit)
			}
		})
	}
}

// TestStreamKeepsTokensApart: a reader that falls behind still gets one output per
// generated token (clients time tokens from them), in order, and the whole output.
func TestStreamKeepsTokensApart(t *testing.T) {
	e := newTestEngine(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := run(t, e.Engine, greedy("twelve tokens", 12))
	s, err := e.Submit(ctx, greedy("twelve tokens", 12))
	if err != nil {
		t.Fatal(err)
	}
	// Read nothing until the request has finished: everything is pending at once.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the request did not finish")
		}
	}
	outs, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 12 {
		t.Fatalf("%d outputs for 12 tokens: %+v", len(outs), outs)
	}
	var text strings.Builder
	var ids []int32
	for i, o := range outs {
		if len(o.TokenIDs) != 1 || o.CompletionTokens != i+1 || o.Finished != (i == 11) {
			t.Errorf("output %d: %+v, want token %d of 12", i, o, i+1)
		}
		text.WriteString(o.Text)
		ids = append(ids, o.TokenIDs...)
	}
	if text.String() != want.Text || !slices.Equal(ids, want.TokenIDs) || outs[11].FinishReason != "length" {
		t.Errorf("streamed %q %v, want %q %v", text.String(), ids, want.Text, want.TokenIDs)
	}
}

// TestLengthCapBehindValidate: the loop itself ends a request at max_model_len ("length",
// as vLLM's check_stop caps every request), also one that bypassed Validate.
func TestLengthCapBehindValidate(t *testing.T) {
	e := newTestEngine(t, nil)
	req := greedy("hello", math.MaxInt)
	r := &request{Request: req, arrival: time.Now(), tokens: slices.Clone(req.Prompt)}
	r.stream = newStream(e.Engine, r)
	e.mu.Lock()
	e.waiting++
	e.open++
	e.incoming = append(e.incoming, r)
	e.mu.Unlock()
	e.signal()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := r.stream.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := 256 - len(req.Prompt); out.CompletionTokens != want || out.FinishReason != "length" {
		t.Errorf("%d tokens, finish %q; want %d and length", out.CompletionTokens, out.FinishReason, want)
	}
}
