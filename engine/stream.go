package engine

import (
	"context"
	"io"
	"strings"
	"sync"
)

// Stream is one request's output. The engine appends to it without ever blocking; the
// reader takes everything accumulated since its last read, still one Output per generated
// token, so a reader that falls behind can time and stream each token on its own.
type Stream struct {
	eng *Engine
	req *request

	mu sync.Mutex
	// pending holds the outputs not yet read, compactly (a reader that stalls, behind a
	// full socket, lets a whole max_model_len of them queue up); last is the newest output,
	// whose prompt counts and finish apply to the last entry.
	pending []pendingOutput
	last    Output
	closed  bool // the final output is pending or was read
	read    bool // the final output was read
	ready   chan struct{}
	aborted bool
}

// pendingOutput is one queued Output: its token (-1 for none), completion count and text.
type pendingOutput struct {
	tok, completion int32
	text            string
}

func newStream(e *Engine, r *request) *Stream {
	return &Stream{eng: e, req: r, ready: make(chan struct{}, 1)}
}

// push queues out, which carries at most one token, and wakes the reader.
func (s *Stream) push(out Output) {
	p := pendingOutput{tok: -1, completion: int32(out.CompletionTokens), text: out.Text}
	if len(out.TokenIDs) > 0 {
		p.tok = out.TokenIDs[0]
	}
	s.mu.Lock()
	s.pending = append(s.pending, p)
	s.last = out
	if out.Finished {
		s.closed = true
	}
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Next waits for output and returns what was generated since the last call: one Output
// per token, in order (the last one, with Finished set, may carry no token when the
// request was aborted). After the output with Finished set it returns io.EOF. If ctx ends
// first, the request is aborted and ctx's error returned.
func (s *Stream) Next(ctx context.Context) ([]Output, error) {
	for {
		s.mu.Lock()
		if s.read {
			s.mu.Unlock()
			return nil, io.EOF
		}
		if len(s.pending) > 0 {
			pending, last := s.pending, s.last
			s.pending = nil
			s.read = last.Finished
			s.mu.Unlock()
			outs := make([]Output, len(pending))
			ids := make([]int32, len(pending))
			for i, p := range pending {
				o := &outs[i]
				o.Text, o.CompletionTokens = p.text, int(p.completion)
				o.PromptTokens, o.CachedTokens = last.PromptTokens, last.CachedTokens
				if p.tok >= 0 {
					ids[i] = p.tok
					o.TokenIDs = ids[i : i+1 : i+1]
				}
			}
			o := &outs[len(outs)-1]
			o.Finished, o.FinishReason, o.StopReason = last.Finished, last.FinishReason, last.StopReason
			o.KVHeld, o.Err = last.KVHeld, last.Err
			return outs, nil
		}
		s.mu.Unlock()
		select {
		case <-s.ready:
		case <-ctx.Done():
			s.Abort()
			return nil, ctx.Err()
		}
	}
}

// Abort asks the engine to stop the request and free its blocks; the stream then ends
// with FinishReason "abort". It is safe to call more than once and after the end.
func (s *Stream) Abort() {
	s.mu.Lock()
	if s.aborted || s.closed {
		s.mu.Unlock()
		return
	}
	s.aborted = true
	s.mu.Unlock()
	s.eng.abort(s.req)
}

// Wait reads the stream to its end and returns the whole output: the text and tokens of
// every output, with the last one's counts and finish.
func (s *Stream) Wait(ctx context.Context) (Output, error) {
	var all Output
	var text strings.Builder
	for {
		outs, err := s.Next(ctx)
		if err != nil {
			all.Text = text.String()
			if err == io.EOF {
				return all, nil
			}
			return all, err
		}
		for _, out := range outs {
			text.WriteString(out.Text)
			all.TokenIDs = append(all.TokenIDs, out.TokenIDs...)
			all.PromptTokens, all.CachedTokens, all.CompletionTokens = out.PromptTokens, out.CachedTokens, out.CompletionTokens
			all.Finished, all.FinishReason, all.StopReason = out.Finished, out.FinishReason, out.StopReason
			all.KVHeld, all.Err = out.KVHeld, out.Err
		}
	}
}
