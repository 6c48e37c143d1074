package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"servelab/engine"
	"servelab/engine/sampling"
	"servelab/serving"
)

// fieldError is a known field whose value has the wrong shape, from a custom decoder.
type fieldError struct{ field, want string }

func (e *fieldError) Error() string { return fmt.Sprintf("%s: expected %s", e.field, e.want) }

// stopList is OpenAI's stop: null, a string or a list of strings.
type stopList []string

func (s *stopList) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*s = nil
		return nil
	}
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return &fieldError{"stop", "a string or a list of strings"}
	}
	*s = many
	return nil
}

// samplingFields are the fields completions and chat completions share: OpenAI's, plus
// vLLM's extensions (top_k, min_p, min_tokens, stop_token_ids, ignore_eos,
// skip_special_tokens, repetition_penalty, priority, return_token_ids).
type samplingFields struct {
	Model             string   `json:"model"`
	MaxTokens         *int     `json:"max_tokens"`
	Temperature       *float64 `json:"temperature"`
	TopP              *float64 `json:"top_p"`
	TopK              *int     `json:"top_k"`
	MinP              *float64 `json:"min_p"`
	Seed              *int64   `json:"seed"`
	Stop              stopList `json:"stop"`
	StopTokenIDs      []int32  `json:"stop_token_ids"`
	IgnoreEOS         bool     `json:"ignore_eos"`
	MinTokens         int      `json:"min_tokens"`
	N                 *int     `json:"n"`
	PresencePenalty   *float64 `json:"presence_penalty"`
	FrequencyPenalty  *float64 `json:"frequency_penalty"`
	RepetitionPenalty *float64 `json:"repetition_penalty"`
	Stream            bool     `json:"stream"`
	StreamOptions     *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	SkipSpecialTokens *bool   `json:"skip_special_tokens"`
	Priority          int     `json:"priority"`
	User              *string `json:"user"`
	// ReturnTokenIDs adds the generated token ids to each choice (vLLM's return_token_ids).
	ReturnTokenIDs bool `json:"return_token_ids"`
	// KVTransferParams is vLLM's kv_transfer_params, read by applyKVTransfer (kvtransfer.go).
	KVTransferParams json.RawMessage `json:"kv_transfer_params"`
}

// defaultCompletionMaxTokens is max_tokens for a /v1/completions request without one.
const defaultCompletionMaxTokens = 16

// completionFields are /v1/completions' own fields.
type completionFields struct {
	Prompt   promptField `json:"prompt"`
	Echo     bool        `json:"echo"`
	Logprobs *int        `json:"logprobs"`
	BestOf   *int        `json:"best_of"`
	Suffix   *string     `json:"suffix"`
}

// chatFields are /v1/chat/completions' own fields.
type chatFields struct {
	MaxCompletionTokens *int  `json:"max_completion_tokens"`
	Logprobs            *bool `json:"logprobs"`
	TopLogprobs         *int  `json:"top_logprobs"`
	Messages            []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
}

// Fields the engine does not implement, by endpoint, each with the values that ask for
// nothing: null (always) and the field's default. Such values are accepted, as vLLM
// accepts them; any other value is a 400 naming the field rather than being ignored.
// Fields neither known nor listed here are ignored, as OpenAI-compatible servers do.
var (
	unsupportedCommon = []unsupportedField{
		{"response_format", []string{`{"type":"text"}`}},
		{"logit_bias", []string{`{}`}},
		// vLLM's structured output and sampling extensions.
		{"structured_outputs", nil},
		{"guided_json", nil},
		{"guided_regex", nil},
		{"guided_choice", nil},
		{"guided_grammar", nil},
		{"guided_whitespace_pattern", nil},
		{"guided_decoding_backend", nil},
		{"use_beam_search", []string{`false`}},
		{"length_penalty", []string{`1`}},
		{"include_stop_str_in_output", []string{`false`}},
		{"prompt_logprobs", nil},
		{"allowed_token_ids", []string{`[]`}},
		{"bad_words", []string{`[]`}},
		{"truncate_prompt_tokens", nil},
		{"logits_processors", []string{`[]`}},
		{"cache_salt", nil},
		{"vllm_xargs", nil},
	}
	completionDecoder = newRequestDecoder([]reflect.Type{reflect.TypeFor[samplingFields](), reflect.TypeFor[completionFields]()}, unsupportedCommon, []unsupportedField{
		{"prompt_embeds", nil},
		{"add_special_tokens", []string{`true`}}, // the prompt is always encoded with them
	})
	chatDecoder = newRequestDecoder([]reflect.Type{reflect.TypeFor[samplingFields](), reflect.TypeFor[chatFields]()}, unsupportedCommon, []unsupportedField{
		// Tool calling: with no tools, no tool call is made, so parallel_tool_calls (either
		// value) is honoured.
		{"tools", []string{`[]`}},
		{"tool_choice", []string{`"none"`}},
		{"functions", []string{`[]`}},
		{"function_call", []string{`"none"`}},
		{"parallel_tool_calls", []string{`true`, `false`}},
		{"audio", nil},
		{"modalities", []string{`["text"]`}},
		{"prediction", nil},
		{"web_search_options", nil},
		{"reasoning_effort", nil},
		// vLLM's chat extensions.
		{"echo", []string{`false`}},
		{"add_generation_prompt", []string{`true`}},
		{"continue_final_message", []string{`false`}},
		{"add_special_tokens", []string{`false`}}, // chat templates write their own BOS
		{"chat_template", nil},
		{"chat_template_kwargs", []string{`{}`}},
		{"documents", nil},
		{"mm_processor_kwargs", nil},
	})
)

type unsupportedField struct {
	name   string
	accept []string // JSON values besides null
}

// requestDecoder decodes a request body in one pass into an endpoint's field structs
// and its unsupported fields (json.Unmarshal scans the whole body each time, and a body may
// be as large as --max-body-bytes). Its struct type holds their fields side by side:
// reflect.StructOf cannot embed unexported types, so the fields are copied flat.
type requestDecoder struct {
	typ    reflect.Type
	parts  []reflect.Type // the field structs, in order; their fields come first in typ
	fields []unsupportedField
	accept [][]any // fields[i]'s accepted values, decoded
}

func newRequestDecoder(parts []reflect.Type, lists ...[]unsupportedField) *requestDecoder {
	d := &requestDecoder{parts: parts}
	var sf []reflect.StructField
	names := map[string]bool{}
	add := func(f reflect.StructField) {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" {
			name = f.Name
		}
		// encoding/json ignores both fields of a duplicated name: a table mistake.
		if names[strings.ToLower(name)] {
			panic("request decoder: field " + name + " twice")
		}
		names[strings.ToLower(name)] = true
		f.Name = fmt.Sprintf("F%d", len(sf))
		f.Index, f.Offset = nil, 0
		sf = append(sf, f)
	}
	for _, p := range parts {
		for i := range p.NumField() {
			add(p.Field(i))
		}
	}
	for _, l := range lists {
		for _, f := range l {
			var vals []any
			for _, a := range f.accept {
				var v any
				if err := json.Unmarshal([]byte(a), &v); err != nil {
					panic(fmt.Sprintf("unsupported field %s: bad accepted value %s", f.name, a))
				}
				vals = append(vals, v)
			}
			d.fields = append(d.fields, f)
			d.accept = append(d.accept, vals)
			add(reflect.StructField{Type: reflect.TypeFor[json.RawMessage](), Tag: reflect.StructTag(`json:"` + f.name + `"`)})
		}
	}
	d.typ = reflect.StructOf(sf)
	return d
}

// decode decodes body into dsts (pointers to the structs of parts, in order; what they
// hold already is kept for fields the body omits) and returns the unsupported fields'
// raw values, for check. Errors are decodeFields' on each dst in turn.
func (d *requestDecoder) decode(body []byte, dsts ...any) ([]json.RawMessage, *apiError) {
	v := reflect.New(d.typ).Elem()
	n := 0
	for i, dst := range dsts {
		if t := reflect.TypeOf(dst); i >= len(d.parts) || t.Elem() != d.parts[i] {
			panic(fmt.Sprintf("request decoder: argument %d is a %v", i, t))
		}
		dv := reflect.ValueOf(dst).Elem()
		for i := range dv.NumField() {
			v.Field(n).Set(dv.Field(i))
			n++
		}
	}
	if err := json.Unmarshal(body, v.Addr().Interface()); err != nil {
		// Which error is reported: the first struct's first, as decoding each in turn does.
		for _, dst := range dsts {
			if e := decodeFields(body, dst); e != nil {
				return nil, e
			}
		}
		return nil, badRequest("", "malformed JSON: %v", err)
	}
	n = 0
	for _, dst := range dsts {
		dv := reflect.ValueOf(dst).Elem()
		for i := range dv.NumField() {
			dv.Field(i).Set(v.Field(n))
			n++
		}
	}
	raws := make([]json.RawMessage, len(d.fields))
	for i := range raws {
		raws[i] = v.Field(n + i).Interface().(json.RawMessage)
	}
	return raws, nil
}

// check refuses the first listed field whose value (raws, from decode) asks for something.
func (d *requestDecoder) check(raws []json.RawMessage) *apiError {
	for i, f := range d.fields {
		raw := raws[i]
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		var got any
		if json.Unmarshal(raw, &got) == nil && slices.ContainsFunc(d.accept[i], func(a any) bool { return reflect.DeepEqual(a, got) }) {
			continue
		}
		accepted := "null"
		for _, a := range f.accept {
			accepted += " or " + a
		}
		return badRequest(f.name, "%s is not supported by this server, got %s; omit it or send %s", f.name, truncate(raw, 80), accepted)
	}
	return nil
}

// promptField is a completion's prompt, raw. A prompt given as a JSON string (or a list
// of one) whose text is known from its length alone to exceed maxText bytes is not kept,
// only marked over: a JSON string of n bytes between its quotes decodes to at least n/6
// bytes of text (\u00XX is the longest form of a byte; invalid UTF-8 only grows, into
// U+FFFD), so a 30 MB prompt to a small context is refused without being copied or decoded.
type promptField struct {
	raw     json.RawMessage
	maxText int64 // 0: no bound
	over    bool
}

func (p *promptField) UnmarshalJSON(data []byte) error {
	if n, ok := stringSpan(data); ok && p.maxText > 0 && int64(n-2) > 6*p.maxText {
		p.raw, p.over = nil, true
		return nil
	}
	p.raw, p.over = append(p.raw[:0], data...), false
	return nil
}

// stringSpan is the length, quotes included, of the JSON string that the valid JSON value
// data is or holds as a list of exactly one element.
func stringSpan(data []byte) (int, bool) {
	if len(data) >= 2 && data[0] == '"' {
		return len(data), true
	}
	if len(data) < 4 || data[0] != '[' || data[len(data)-1] != ']' {
		return 0, false
	}
	in := bytes.TrimSpace(data[1 : len(data)-1])
	if len(in) < 2 || in[0] != '"' {
		return 0, false
	}
	// The string ends at the first unescaped quote after its opening one.
	for i := 1; ; {
		j := bytes.IndexByte(in[i:], '"')
		if j < 0 {
			return 0, false
		}
		i += j
		k := i
		for k > 0 && in[k-1] == '\\' {
			k--
		}
		if (i-k)%2 == 0 {
			if i != len(in)-1 {
				return 0, false // more follows: another element
			}
			return len(in), true
		}
		i++
	}
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "..."
}

// readBody reads a request body of at most s.maxBody bytes within BodyTimeout.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *apiError) {
	body, err := s.readBodyTimed(w, r)
	if err != nil {
		if errors.Is(err, errLargeBusy) {
			w.Header().Set("Retry-After", s.retryAfter())
			return nil, &apiError{status: http.StatusServiceUnavailable, Msg: fmt.Sprintf("%v; retry later", err), Type: "ServiceUnavailableError"}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, &apiError{status: http.StatusRequestTimeout, Msg: fmt.Sprintf("the request body was not received within %v", s.cfg.BodyTimeout), Type: "RequestTimeoutError"}
		}
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &apiError{status: http.StatusRequestEntityTooLarge, Msg: fmt.Sprintf("the request body exceeds %d bytes (--max-body-bytes; by default sized from the %d-token context)", s.maxBody, s.cfg.MaxModelLen), Type: "RequestTooLargeError"}
		}
		return nil, badRequest("", "reading the request body: %v", err)
	}
	return body, nil
}

// decodeFields decodes body into v (a struct pointer): unknown fields are ignored, known
// ones must have the right type, and the error names the field.
func decodeFields(body []byte, v any) *apiError {
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var typeErr *json.UnmarshalTypeError
	var fieldErr *fieldError
	switch {
	case errors.As(err, &fieldErr):
		return badRequest(fieldErr.field, "invalid value for %q: expected %s", fieldErr.field, fieldErr.want)
	case errors.As(err, &typeErr) && typeErr.Field == "":
		return badRequest("", "the request body must be a JSON object, got %s", typeErr.Value)
	case errors.As(err, &typeErr):
		return badRequest(typeErr.Field, "invalid type for %q: expected %s, got %s", typeErr.Field, jsonKind(typeErr.Type), typeErr.Value)
	default:
		return badRequest("", "malformed JSON: %v", err)
	}
}

// jsonKind names the JSON value a Go type decodes from.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(jsonKind(t.Elem()), "a "), "an ") + "s"
	default:
		return "an object"
	}
}

// samplingParams validates the request's sampling fields and applies them over the
// model's generation defaults; maxTokens nil means what the context leaves.
func (s *Server) samplingParams(f *samplingFields, promptLen int, maxTokens *int) (engine.SamplingParams, *apiError) {
	switch {
	case f.N != nil && *f.N != 1:
		return engine.SamplingParams{}, badRequest("n", "only n=1 is supported, got %d", *f.N)
	case f.PresencePenalty != nil && *f.PresencePenalty != 0:
		return engine.SamplingParams{}, badRequest("presence_penalty", "presence_penalty is not supported")
	case f.FrequencyPenalty != nil && *f.FrequencyPenalty != 0:
		return engine.SamplingParams{}, badRequest("frequency_penalty", "frequency_penalty is not supported")
	case f.RepetitionPenalty != nil && *f.RepetitionPenalty != 1:
		return engine.SamplingParams{}, badRequest("repetition_penalty", "repetition_penalty is not supported")
	case f.StreamOptions != nil && !f.Stream:
		return engine.SamplingParams{}, badRequest("stream_options", "stream_options can only be set when stream is true")
	case f.MinTokens < 0:
		return engine.SamplingParams{}, badRequest("min_tokens", "min_tokens must be at least 0, got %d", f.MinTokens)
	}
	p := engine.SamplingParams{
		Params:            sampling.Params{Temperature: 1, TopP: 1},
		Stop:              f.Stop,
		StopTokenIDs:      f.StopTokenIDs,
		IgnoreEOS:         f.IgnoreEOS,
		MinTokens:         f.MinTokens,
		SkipSpecialTokens: true,
	}
	set := func(dst *float64, def, req *float64) {
		if req != nil {
			*dst = *req
		} else if def != nil {
			*dst = *def
		}
	}
	d := s.cfg.Defaults
	set(&p.Temperature, d.Temperature, f.Temperature)
	set(&p.TopP, d.TopP, f.TopP)
	set(&p.MinP, nil, f.MinP)
	if f.TopK != nil {
		p.TopK = *f.TopK
	} else if d.TopK != nil {
		p.TopK = *d.TopK
	}
	switch {
	case p.Temperature < 0 || math.IsNaN(p.Temperature):
		return p, badRequest("temperature", "temperature must be at least 0, got %v", p.Temperature)
	case !(p.TopP > 0 && p.TopP <= 1):
		return p, badRequest("top_p", "top_p must be in (0, 1], got %v", p.TopP)
	case p.TopK < -1:
		return p, badRequest("top_k", "top_k must be -1 or 0 (disabled) or at least 1, got %d", p.TopK)
	case !(p.MinP >= 0 && p.MinP <= 1):
		return p, badRequest("min_p", "min_p must be in [0, 1], got %v", p.MinP)
	}
	if f.Seed != nil {
		p.Seed, p.Seeded = uint64(*f.Seed), true
	}
	if f.SkipSpecialTokens != nil {
		p.SkipSpecialTokens = *f.SkipSpecialTokens
	}
	if maxTokens != nil {
		p.MaxTokens = *maxTokens
	} else {
		// vLLM's default: whatever the context leaves.
		p.MaxTokens = s.cfg.MaxModelLen - promptLen
	}
	return p, nil
}

// checkPromptLen refuses a prompt that leaves no room for a token.
func (s *Server) checkPromptLen(param string, n int) *apiError {
	if n >= s.cfg.MaxModelLen {
		return badRequest(param, "This model's maximum context length is %d tokens. However, your request has %d input tokens, which leaves no room for the completion. Please reduce the length of the input.", s.cfg.MaxModelLen, n)
	}
	return nil
}

// parsePrompt reads a completion prompt: a string, a list of token ids, or a list holding
// one of those. text is the prompt's text when it was given as a string.
func (s *Server) parsePrompt(ctx context.Context, raw json.RawMessage) (ids []int32, text string, isText bool, e *apiError) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, "", false, badRequest("prompt", "prompt is required")
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		if one == "" {
			return nil, "", false, badRequest("prompt", "the prompt is empty")
		}
		ids, e := s.encodePrompt(ctx, "prompt", one, true)
		return ids, one, true, e
	}
	var tokens []int32
	if json.Unmarshal(raw, &tokens) == nil {
		return tokens, "", false, s.checkTokens(tokens)
	}
	var texts []string
	if json.Unmarshal(raw, &texts) == nil {
		switch len(texts) {
		case 0:
			return nil, "", false, badRequest("prompt", "the prompt is empty")
		case 1:
			b, _ := json.Marshal(texts[0])
			return s.parsePrompt(ctx, b)
		}
		return nil, "", false, badRequest("prompt", "batched prompts are not supported: send one prompt per request")
	}
	var batch [][]int32
	if json.Unmarshal(raw, &batch) == nil {
		switch len(batch) {
		case 0:
			return nil, "", false, badRequest("prompt", "the prompt is empty")
		case 1:
			return batch[0], "", false, s.checkTokens(batch[0])
		}
		return nil, "", false, badRequest("prompt", "batched prompts are not supported: send one prompt per request")
	}
	return nil, "", false, badRequest("prompt", "invalid type for \"prompt\": expected a string or a list of token ids")
}

func (s *Server) checkTokens(ids []int32) *apiError {
	if len(ids) == 0 {
		return badRequest("prompt", "the prompt is empty")
	}
	vocab := math.MaxInt32
	if v, ok := s.cfg.Tokenizer.(vocabSizer); ok {
		vocab = v.VocabSize()
	}
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			return badRequest("prompt", "prompt[%d]: token id %d is out of vocabulary", i, id)
		}
	}
	return nil
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	body, e := s.readBody(w, r)
	if e != nil {
		writeError(w, e)
		return
	}
	var f samplingFields
	var c completionFields
	c.Prompt.maxText = s.maxPromptText()
	unsupported, e := completionDecoder.decode(body, &f, &c)
	if e != nil {
		writeError(w, e)
		return
	}
	if e := s.checkModel(f.Model); e != nil {
		writeError(w, e)
		return
	}
	if e := completionDecoder.check(unsupported); e != nil {
		writeError(w, e)
		return
	}
	switch {
	case c.Logprobs != nil:
		writeError(w, badRequest("logprobs", "logprobs are not supported"))
		return
	case c.BestOf != nil && *c.BestOf != 1:
		writeError(w, badRequest("best_of", "only best_of=1 is supported, got %d", *c.BestOf))
		return
	case c.Suffix != nil && *c.Suffix != "":
		writeError(w, badRequest("suffix", "suffix is not supported"))
		return
	}
	var prompt []int32
	var text string
	var isText bool
	if c.Prompt.over {
		e = s.overContext("prompt")
	} else {
		prompt, text, isText, e = s.parsePrompt(r.Context(), c.Prompt.raw)
	}
	if e == nil {
		e = s.checkPromptLen("prompt", len(prompt))
	}
	if e != nil {
		writeError(w, e)
		return
	}
	maxTokens := f.MaxTokens
	if maxTokens == nil {
		// OpenAI's and vLLM's default for completions (protocol.py's CompletionRequest);
		// chat defaults to what the context leaves.
		n := defaultCompletionMaxTokens
		maxTokens = &n
	}
	sp, e := s.samplingParams(&f, len(prompt), maxTokens)
	if e != nil {
		writeError(w, e)
		return
	}
	j := &job{
		req:    engine.Request{ID: newID("cmpl-"), Prompt: prompt, Sampling: sp, Priority: f.Priority},
		object: "text_completion", stream: f.Stream,
		includeUsage: f.StreamOptions != nil && f.StreamOptions.IncludeUsage,
		tokenIDs:     f.ReturnTokenIDs,
	}
	if e := s.applyKVTransfer(f.KVTransferParams, f.Stream, &j.req); e != nil {
		writeError(w, e)
		return
	}
	if c.Echo {
		if isText {
			j.echo = text
		} else {
			j.echo = s.cfg.Tokenizer.Decode(prompt, sp.SkipSpecialTokens)
		}
	}
	s.generate(w, r, j)
}

// chatRoles are the roles a message may have.
var chatRoles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true}

func (s *Server) chatCompletions(w http.ResponseWriter, r *http.Request) {
	body, e := s.readBody(w, r)
	if e != nil {
		writeError(w, e)
		return
	}
	var f samplingFields
	var c chatFields
	unsupported, e := chatDecoder.decode(body, &f, &c)
	if e != nil {
		writeError(w, e)
		return
	}
	if e := s.checkModel(f.Model); e != nil {
		writeError(w, e)
		return
	}
	if e := chatDecoder.check(unsupported); e != nil {
		writeError(w, e)
		return
	}
	switch {
	case c.Logprobs != nil && *c.Logprobs:
		writeError(w, badRequest("logprobs", "logprobs are not supported"))
		return
	case c.TopLogprobs != nil && *c.TopLogprobs != 0:
		writeError(w, badRequest("top_logprobs", "top_logprobs are not supported"))
		return
	case len(c.Messages) == 0:
		writeError(w, badRequest("messages", "messages must not be empty"))
		return
	}
	msgs := make([]Message, len(c.Messages))
	for i, m := range c.Messages {
		if !chatRoles[m.Role] {
			writeError(w, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d].role: unknown role %q (want system, developer, user, assistant or tool)", i, m.Role))
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
		writeError(w, badRequest("messages", "applying the chat template: %v", err))
		return
	}
	// Chat templates write their own BOS.
	prompt, e := s.encodePrompt(r.Context(), "messages", text, false)
	if e != nil {
		writeError(w, e)
		return
	}
	if len(prompt) == 0 {
		writeError(w, badRequest("messages", "the rendered conversation is empty"))
		return
	}
	if e := s.checkPromptLen("messages", len(prompt)); e != nil {
		writeError(w, e)
		return
	}
	maxTokens, maxParam := c.MaxCompletionTokens, "max_completion_tokens"
	if maxTokens == nil {
		maxTokens, maxParam = f.MaxTokens, ""
	}
	sp, e := s.samplingParams(&f, len(prompt), maxTokens)
	if e != nil {
		writeError(w, e)
		return
	}
	j := &job{
		req:    engine.Request{ID: newID("chatcmpl-"), Prompt: prompt, Sampling: sp, Priority: f.Priority},
		object: "chat.completion", chat: true, stream: f.Stream, maxParam: maxParam,
		includeUsage: f.StreamOptions != nil && f.StreamOptions.IncludeUsage,
		tokenIDs:     f.ReturnTokenIDs,
	}
	if e := s.applyKVTransfer(f.KVTransferParams, f.Stream, &j.req); e != nil {
		writeError(w, e)
		return
	}
	s.generate(w, r, j)
}

// messageText reads a message's content: null, a string, or a list of text parts
// (serving.ChatMessageText, which the router's prompt hashing reads messages with too).
func messageText(raw json.RawMessage) (string, error) { return serving.ChatMessageText(raw) }

// Response bodies, with OpenAI's field names.
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

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// choice is a completion's or a chat completion's choice, whole or streamed: exactly one
// of Text, Message and Delta is set.
type choice struct {
	Index        int          `json:"index"`
	Text         *string      `json:"text,omitempty"`
	Message      *chatMessage `json:"message,omitempty"`
	Delta        *chatDelta   `json:"delta,omitempty"`
	Logprobs     any          `json:"logprobs"`
	FinishReason *string      `json:"finish_reason"`
	StopReason   any          `json:"stop_reason"`
	TokenIDs     []int32      `json:"token_ids,omitempty"`
}

type response struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices []choice `json:"choices"`
	Usage   *usage   `json:"usage,omitempty"`
	// KVTransferParams is set on a do_remote_decode request's response (kvtransfer.go).
	KVTransferParams *kvTransferOut `json:"kv_transfer_params,omitempty"`
}

// job is one generation request on its way to the engine.
type job struct {
	req          engine.Request
	object       string // "text_completion" or "chat.completion"
	chat         bool
	stream       bool
	includeUsage bool
	tokenIDs     bool   // return_token_ids
	echo         string // completions' echo: the prompt text, prepended to the output
	maxParam     string // the field max tokens came from, when not max_tokens
}

// generate submits the job and writes the response, streamed or whole.
func (s *Server) generate(w http.ResponseWriter, r *http.Request, j *job) {
	if s.closing.Load() {
		writeError(w, unavailable())
		return
	}
	ctx := r.Context()
	stream, err := s.cfg.Engine.Submit(ctx, j.req)
	if err != nil {
		s.submitError(w, err, j.maxParam)
		return
	}
	created := time.Now().Unix()
	if !j.stream {
		out, err := stream.Wait(ctx)
		if err != nil {
			// The client went away; the engine aborted the request, unless it had finished
			// already and holds its KV for a pull nobody will make.
			if j.req.RemoteDecode {
				if out, _ := stream.Wait(context.Background()); out.KVHeld != nil {
					s.cfg.Engine.ReleaseKV(out.KVHeld.RequestID)
				}
			}
			return
		}
		if out.Err != nil {
			kvPullFailed(w, out.Err)
			return
		}
		c := choice{FinishReason: &out.FinishReason, StopReason: out.StopReason}
		if j.tokenIDs {
			c.TokenIDs = out.TokenIDs
		}
		if j.chat {
			c.Message = &chatMessage{Role: "assistant", Content: out.Text}
		} else {
			text := j.echo + out.Text
			c.Text = &text
		}
		resp := response{ID: j.req.ID, Object: j.object, Created: created, Model: s.cfg.ModelName, Choices: []choice{c}, Usage: usageOf(out),
			KVTransferParams: s.kvOut(r, out.KVHeld)}
		if out.KVHeld != nil && ctx.Err() != nil {
			// The client left before its answer: nobody will pull the KV.
			s.cfg.Engine.ReleaseKV(out.KVHeld.RequestID)
			return
		}
		err = writeJSON(w, resp)
		if out.KVHeld != nil {
			if err == nil {
				err = http.NewResponseController(w).Flush()
			}
			if err != nil {
				// Nobody learns where the KV is: free it now rather than at the timeout.
				s.cfg.Engine.ReleaseKV(out.KVHeld.RequestID)
			}
		}
		return
	}
	var first []engine.Output
	if j.req.RemotePrefill != nil {
		// The status waits for the KV pull: a failed one is a 503 the router retries.
		if first, err = stream.Next(ctx); err != nil {
			return
		}
		if last := first[len(first)-1]; last.Err != nil {
			kvPullFailed(w, last.Err)
			return
		}
	}

	flusher, ok := w.(http.Flusher)
	if !ok {
		stream.Abort()
		writeError(w, &apiError{status: http.StatusInternalServerError, Msg: "streaming is not supported by this connection", Type: "InternalServerError"})
		return
	}
	object := j.object
	if j.chat {
		object = "chat.completion.chunk"
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	// The headers go out at once, so a client sees its request accepted while it waits in
	// the queue.
	flusher.Flush()
	send := func(v any) bool {
		data, err := json.Marshal(v)
		if err == nil {
			_, err = fmt.Fprintf(w, "data: %s\n\n", data)
		}
		if err != nil {
			stream.Abort()
			return false
		}
		flusher.Flush()
		return true
	}
	chunk := func(c choice) response {
		return response{ID: j.req.ID, Object: object, Created: created, Model: s.cfg.ModelName, Choices: []choice{c}}
	}
	textChoice := func(text string) choice {
		if j.chat {
			return choice{Delta: &chatDelta{Content: &text}}
		}
		return choice{Text: &text}
	}
	if j.chat {
		empty := ""
		if !send(chunk(choice{Delta: &chatDelta{Role: "assistant", Content: &empty}})) {
			return
		}
	} else if j.echo != "" {
		if !send(chunk(textChoice(j.echo))) {
			return
		}
	}
	var last engine.Output
	for {
		outs, err := first, error(nil)
		if first != nil {
			first = nil
		} else {
			outs, err = stream.Next(ctx)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return // the client went away: Next aborted the request
		}
		for _, out := range outs {
			last = out
			// One chunk per generated token, also when its text is held back (an
			// incomplete UTF-8 sequence, a possible stop string): clients time tokens by
			// chunks. vLLM's serving_chat.py and serving_completion.py stream the same way.
			if len(out.TokenIDs) > 0 || out.Text != "" {
				c := textChoice(out.Text)
				if j.tokenIDs {
					c.TokenIDs = out.TokenIDs
				}
				if !send(chunk(c)) {
					return
				}
			}
			if out.Finished {
				end := textChoice("")
				if j.chat {
					end.Delta.Content = nil
				}
				end.FinishReason, end.StopReason = &out.FinishReason, out.StopReason
				if !send(chunk(end)) {
					return
				}
			}
		}
	}
	if j.includeUsage {
		if !send(response{ID: j.req.ID, Object: object, Created: created, Model: s.cfg.ModelName, Choices: []choice{}, Usage: usageOf(last)}) {
			return
		}
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	flusher.Flush()
}

// card is the served model's object, as /v1/models lists it.
func (s *Server) card() modelCard {
	return modelCard{
		ID: s.cfg.ModelName, Object: "model", Created: s.created, OwnedBy: "servelab",
		Root: s.cfg.ModelName, MaxModelLen: s.cfg.MaxModelLen,
	}
}

// model is OpenAI's retrieve-model endpoint, GET /v1/models/{model}: the model object, or a
// 404 for a model this server does not serve. The id may contain slashes, as Hugging Face
// names do.
func (s *Server) model(w http.ResponseWriter, r *http.Request) {
	if id := r.PathValue("id"); id != s.cfg.ModelName {
		writeError(w, &apiError{status: http.StatusNotFound, Msg: fmt.Sprintf("The model `%s` does not exist.", id), Type: "NotFoundError", Param: "model"})
		return
	}
	writeJSON(w, s.card())
}
