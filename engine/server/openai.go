package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"servelab/engine"
	"servelab/engine/sampling"
)

// stopField is OpenAI's stop: a string or a list of strings.
type stopField []string

func (s *stopField) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("want a string or a list of strings")
	}
	*s = many
	return nil
}

// common are the fields completions and chat completions share (OpenAI's, plus vLLM's
// sampling extensions top_k, min_p, min_tokens, stop_token_ids, ignore_eos, priority).
type common struct {
	Model         string    `json:"model"`
	MaxTokens     *int      `json:"max_tokens"`
	Temperature   *float64  `json:"temperature"`
	TopP          *float64  `json:"top_p"`
	TopK          *int      `json:"top_k"`
	MinP          *float64  `json:"min_p"`
	Seed          *int64    `json:"seed"`
	Stop          stopField `json:"stop"`
	StopTokenIDs  []int32   `json:"stop_token_ids"`
	IgnoreEOS     bool      `json:"ignore_eos"`
	MinTokens     int       `json:"min_tokens"`
	N             *int      `json:"n"`
	Stream        bool      `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Logprobs          json.RawMessage `json:"logprobs"`
	SkipSpecialTokens *bool           `json:"skip_special_tokens"`
	Priority          int             `json:"priority"`
}

type completionRequest struct {
	common
	Prompt json.RawMessage `json:"prompt"`
	Echo   bool            `json:"echo"`
}

type chatRequest struct {
	common
	MaxCompletionTokens *int `json:"max_completion_tokens"`
	Messages            []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
}

// decode reads a JSON body strictly for known fields; errors name the field.
func decode(r *http.Request, v any) *apiError {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, 32<<20))
	if err != nil {
		return badRequest("", "reading the body: %v", err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		var syntaxErr *json.SyntaxError
		switch {
		case errors.As(err, &typeErr):
			field := strings.TrimPrefix(typeErr.Field, "common.")
			return badRequest(field, "field %q: expected %s, got JSON %s", field, typeErr.Type, typeErr.Value)
		case errors.As(err, &syntaxErr):
			return badRequest("", "malformed JSON at byte %d: %v", syntaxErr.Offset, err)
		default:
			return badRequest("", "invalid request body: %v", err)
		}
	}
	return nil
}

// samplingParams applies the request's fields over the model's generation defaults.
func (s *Server) samplingParams(c *common, promptLen int, maxTokens *int) (engine.SamplingParams, *apiError) {
	if c.N != nil && *c.N != 1 {
		return engine.SamplingParams{}, badRequest("n", "only n=1 is supported, got %d", *c.N)
	}
	if len(c.Logprobs) > 0 && string(c.Logprobs) != "null" && string(c.Logprobs) != "false" {
		return engine.SamplingParams{}, badRequest("logprobs", "logprobs are not supported")
	}
	p := engine.SamplingParams{
		Params:            sampling.Params{Temperature: 1, TopP: 1},
		Stop:              c.Stop,
		StopTokenIDs:      c.StopTokenIDs,
		IgnoreEOS:         c.IgnoreEOS,
		MinTokens:         c.MinTokens,
		SkipSpecialTokens: true,
	}
	d := s.cfg.Defaults
	if d.Temperature != nil {
		p.Temperature = *d.Temperature
	}
	if d.TopP != nil {
		p.TopP = *d.TopP
	}
	if d.TopK != nil {
		p.TopK = *d.TopK
	}
	if c.Temperature != nil {
		p.Temperature = *c.Temperature
	}
	if c.TopP != nil {
		p.TopP = *c.TopP
	}
	if c.TopK != nil {
		p.TopK = *c.TopK
	}
	if c.MinP != nil {
		p.MinP = *c.MinP
	}
	if c.Seed != nil {
		p.Seed, p.Seeded = uint64(*c.Seed), true
	}
	if c.SkipSpecialTokens != nil {
		p.SkipSpecialTokens = *c.SkipSpecialTokens
	}
	if maxTokens != nil {
		p.MaxTokens = *maxTokens
	} else {
		// vLLM's default: whatever the context leaves.
		p.MaxTokens = max(1, s.cfg.MaxModelLen-promptLen)
	}
	return p, nil
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	if e := decode(r, &req); e != nil {
		writeError(w, e)
		return
	}
	if e := s.checkModel(req.Model); e != nil {
		writeError(w, e)
		return
	}
	var prompt []int32
	var text string
	if json.Unmarshal(req.Prompt, &text) == nil {
		prompt = s.cfg.Tokenizer.Encode(text, true)
	} else if json.Unmarshal(req.Prompt, &prompt) != nil {
		writeError(w, badRequest("prompt", "prompt must be a string or a list of token ids (batched prompts are not supported)"))
		return
	}
	if len(prompt) == 0 {
		writeError(w, badRequest("prompt", "the prompt is empty"))
		return
	}
	sp, e := s.samplingParams(&req.common, len(prompt), req.MaxTokens)
	if e != nil {
		writeError(w, e)
		return
	}
	echo := ""
	if req.Echo {
		echo = s.cfg.Tokenizer.Decode(prompt, true)
	}
	s.generate(w, r, engine.Request{ID: newID("cmpl-"), Prompt: prompt, Sampling: sp, Priority: req.Priority}, &req.common, false, echo)
}

func (s *Server) chatCompletions(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if e := decode(r, &req); e != nil {
		writeError(w, e)
		return
	}
	if e := s.checkModel(req.Model); e != nil {
		writeError(w, e)
		return
	}
	if len(req.Messages) == 0 {
		writeError(w, badRequest("messages", "messages must not be empty"))
		return
	}
	msgs := make([]Message, len(req.Messages))
	for i, m := range req.Messages {
		switch m.Role {
		case "system", "user", "assistant", "developer", "tool":
		default:
			writeError(w, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d].role: unknown role %q", i, m.Role))
			return
		}
		content, err := messageText(m.Content)
		if err != nil {
			writeError(w, badRequest(fmt.Sprintf("messages[%d].content", i), "messages[%d].content: %v", i, err))
			return
		}
		msgs[i] = Message{Role: m.Role, Content: content}
	}
	text, err := s.cfg.Tokenizer.RenderChat(msgs, true)
	if err != nil {
		writeError(w, badRequest("messages", "%v", err))
		return
	}
	// Chat templates write their own BOS.
	prompt := s.cfg.Tokenizer.Encode(text, false)
	maxTokens := req.MaxCompletionTokens
	if maxTokens == nil {
		maxTokens = req.MaxTokens
	}
	sp, e := s.samplingParams(&req.common, len(prompt), maxTokens)
	if e != nil {
		writeError(w, e)
		return
	}
	s.generate(w, r, engine.Request{ID: newID("chatcmpl-"), Prompt: prompt, Sampling: sp, Priority: req.Priority}, &req.common, true, "")
}

// messageText reads a message's content: a string, or a list of {type: text, text} parts.
func messageText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("want a string or a list of content parts")
	}
	var out string
	for i, p := range parts {
		if p.Type != "text" {
			return "", fmt.Errorf("part %d: type %q is not supported (text only)", i, p.Type)
		}
		out += p.Text
	}
	return out, nil
}

type usage struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	TotalTokens         int `json:"total_tokens"`
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

func usageOf(o engine.Output) *usage {
	u := &usage{PromptTokens: o.PromptTokens, CompletionTokens: o.CompletionTokens, TotalTokens: o.PromptTokens + o.CompletionTokens}
	u.PromptTokensDetails.CachedTokens = o.CachedTokens
	return u
}

func finishReason(o engine.Output) any {
	if !o.Finished {
		return nil
	}
	return o.FinishReason
}

// generate submits the request and writes the response, streamed or whole.
func (s *Server) generate(w http.ResponseWriter, r *http.Request, req engine.Request, c *common, chat bool, echo string) {
	if s.shuttingDown() {
		s.submitError(w, engine.ErrShuttingDown)
		return
	}
	ctx := r.Context()
	stream, err := s.cfg.Engine.Submit(ctx, req)
	if err != nil {
		s.submitError(w, err)
		return
	}
	created := time.Now().Unix()
	object := "text_completion"
	if chat {
		object = "chat.completion"
	}
	if !c.Stream {
		out, err := stream.Wait(ctx)
		if err != nil {
			return // the client went away; the engine aborted the request
		}
		choice := map[string]any{"index": 0, "finish_reason": finishReason(out), "stop_reason": out.StopReason, "logprobs": nil}
		if chat {
			choice["message"] = map[string]any{"role": "assistant", "content": out.Text}
		} else {
			choice["text"] = echo + out.Text
		}
		writeJSON(w, map[string]any{
			"id": req.ID, "object": object, "created": created, "model": s.cfg.ModelName,
			"choices": []any{choice}, "usage": usageOf(out),
		})
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		stream.Abort()
		writeError(w, &apiError{status: http.StatusInternalServerError, Msg: "streaming unsupported", Type: "InternalServerError"})
		return
	}
	if chat {
		object = "chat.completion.chunk"
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	// Headers go out at once, so a client sees its request accepted while it waits in
	// the queue.
	flusher.Flush()
	send := func(v any) bool {
		data, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
			stream.Abort()
			return false
		}
		flusher.Flush()
		return true
	}
	chunk := func(choice map[string]any) map[string]any {
		return map[string]any{"id": req.ID, "object": object, "created": created, "model": s.cfg.ModelName, "choices": []any{choice}}
	}
	if chat {
		if !send(chunk(map[string]any{"index": 0, "delta": map[string]any{"role": "assistant", "content": ""}, "logprobs": nil, "finish_reason": nil})) {
			return
		}
	} else if echo != "" {
		if !send(chunk(map[string]any{"index": 0, "text": echo, "logprobs": nil, "finish_reason": nil})) {
			return
		}
	}
	var last engine.Output
	for {
		out, err := stream.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return // client gone: Next aborted the request
		}
		last = out
		if out.Text == "" && !out.Finished {
			continue
		}
		choice := map[string]any{"index": 0, "logprobs": nil, "finish_reason": finishReason(out)}
		if out.Finished {
			choice["stop_reason"] = out.StopReason
		}
		if chat {
			delta := map[string]any{}
			if out.Text != "" {
				delta["content"] = out.Text
			}
			choice["delta"] = delta
		} else {
			choice["text"] = out.Text
		}
		if !send(chunk(choice)) {
			return
		}
	}
	if c.StreamOptions != nil && c.StreamOptions.IncludeUsage {
		if !send(map[string]any{"id": req.ID, "object": object, "created": created, "model": s.cfg.ModelName, "choices": []any{}, "usage": usageOf(last)}) {
			return
		}
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	flusher.Flush()
}
