package engine

import (
	"context"
	"io"
	"sync"
)

// Stream is one request's output. The engine appends to it without ever blocking; the
// reader takes everything accumulated since its last read.
type Stream struct {
	eng *Engine
	req *request

	mu      sync.Mutex
	pending Output
	has     bool
	closed  bool // the final output is pending or was read
	read    bool // the final output was read
	ready   chan struct{}
	aborted bool
}

func newStream(e *Engine, r *request) *Stream {
	return &Stream{eng: e, req: r, ready: make(chan struct{}, 1)}
}

// push merges out into the pending output and wakes the reader.
func (s *Stream) push(out Output) {
	s.mu.Lock()
	p := &s.pending
	p.Text += out.Text
	p.TokenIDs = append(p.TokenIDs, out.TokenIDs...)
	p.PromptTokens, p.CachedTokens, p.CompletionTokens = out.PromptTokens, out.CachedTokens, out.CompletionTokens
	if out.Finished {
		p.Finished, p.FinishReason, p.StopReason = true, out.FinishReason, out.StopReason
		s.closed = true
	}
	s.has = true
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Next waits for output and returns everything generated since the last call. After the
// output with Finished set it returns io.EOF. If ctx ends first, the request is aborted
// and ctx's error returned.
func (s *Stream) Next(ctx context.Context) (Output, error) {
	for {
		s.mu.Lock()
		if s.read {
			s.mu.Unlock()
			return Output{}, io.EOF
		}
		if s.has {
			out := s.pending
			s.pending, s.has = Output{}, false
			s.read = out.Finished
			s.mu.Unlock()
			return out, nil
		}
		s.mu.Unlock()
		select {
		case <-s.ready:
		case <-ctx.Done():
			s.Abort()
			return Output{}, ctx.Err()
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

// Wait reads the stream to its end and returns the whole output.
func (s *Stream) Wait(ctx context.Context) (Output, error) {
	var all Output
	for {
		out, err := s.Next(ctx)
		if err == io.EOF {
			return all, nil
		}
		if err != nil {
			return all, err
		}
		all.Text += out.Text
		all.TokenIDs = append(all.TokenIDs, out.TokenIDs...)
		all.PromptTokens, all.CachedTokens, all.CompletionTokens = out.PromptTokens, out.CachedTokens, out.CompletionTokens
		all.Finished, all.FinishReason, all.StopReason = out.Finished, out.FinishReason, out.StopReason
	}
}
