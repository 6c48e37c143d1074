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

	mu      sync.Mutex
	pending []Output
	closed  bool // the final output is pending or was read
	read    bool // the final output was read
	ready   chan struct{}
	aborted bool
}

func newStream(e *Engine, r *request) *Stream {
	return &Stream{eng: e, req: r, ready: make(chan struct{}, 1)}
}

// push queues out and wakes the reader. A request has at most MaxModelLen outputs, so the
// queue of a reader that never reads is bounded like the text it would accumulate.
func (s *Stream) push(out Output) {
	s.mu.Lock()
	s.pending = append(s.pending, out)
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
			outs := s.pending
			s.pending = nil
			s.read = outs[len(outs)-1].Finished
			s.mu.Unlock()
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
		}
	}
}
