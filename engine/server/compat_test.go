package server

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestMaxTokensDefaults: /v1/completions without max_tokens generates 16 tokens (OpenAI's
// and vLLM's CompletionRequest default) and is refused when 16 do not fit; chat generates
// what the context leaves.
func TestMaxTokensDefaults(t *testing.T) {
	f := start(t, options{})
	r := f.whole("/v1/completions", `{"prompt":"hello","ignore_eos":true,"temperature":0}`)
	if r.Usage.CompletionTokens != 16 || r.FinishReason != "length" {
		t.Errorf("completions without max_tokens: %+v, want 16 tokens and length", r)
	}
	long := strings.Repeat("x", testMaxModelLen-16) // 241 tokens with BOS: 16 do not fit
	status, data := f.postWithin(30*time.Second, "/v1/completions", `{"prompt":"`+long+`"}`)
	if status != 400 || !strings.Contains(string(data), `"param":"max_tokens"`) {
		t.Errorf("a prompt that leaves fewer than 16 tokens: %d %s, want a 400 naming max_tokens", status, data)
	}
	c := f.whole("/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"ignore_eos":true,"temperature":0}`)
	if c.Usage.CompletionTokens != testMaxModelLen-c.Usage.PromptTokens || c.FinishReason != "length" {
		t.Errorf("chat without max_tokens: %+v, want the rest of the context (%d)", c, testMaxModelLen-c.Usage.PromptTokens)
	}
}

// TestUnsupportedFields: fields the engine does not implement are refused with a 400
// naming them when they ask for something; their null or default values are accepted, as
// vLLM accepts them.
func TestUnsupportedFields(t *testing.T) {
	f := start(t, options{})
	tests := []struct {
		field, value string
		refused      bool
		chatOnly     bool
	}{
		{"response_format", `{"type":"json_object"}`, true, false},
		{"response_format", `{"type":"json_schema","json_schema":{"name":"x","schema":{}}}`, true, false},
		{"response_format", `{"type":"text"}`, false, false},
		{"response_format", `null`, false, false},
		{"tools", `[{"type":"function","function":{"name":"f","parameters":{}}}]`, true, true},
		{"tools", `null`, false, true},
		{"tools", `[]`, false, true},
		{"tool_choice", `"auto"`, true, true},
		{"tool_choice", `"required"`, true, true},
		{"tool_choice", `{"type":"function","function":{"name":"f"}}`, true, true},
		{"tool_choice", `"none"`, false, true},
		{"tool_choice", `null`, false, true},
		{"functions", `[{"name":"f","parameters":{}}]`, true, true},
		{"functions", `null`, false, true},
		{"function_call", `"auto"`, true, true},
		{"function_call", `"none"`, false, true},
		{"parallel_tool_calls", `true`, false, true},
		{"parallel_tool_calls", `false`, false, true},
		{"logit_bias", `{"5":1}`, true, false},
		{"logit_bias", `{}`, false, false},
		{"logit_bias", `null`, false, false},
		{"guided_json", `{"type":"object"}`, true, false},
		{"guided_regex", `"a+"`, true, false},
		{"guided_choice", `["a","b"]`, true, false},
		{"guided_grammar", `"root ::= x"`, true, false},
		{"structured_outputs", `{"json":{}}`, true, false},
		{"guided_json", `null`, false, false},
		{"use_beam_search", `true`, true, false},
		{"use_beam_search", `false`, false, false},
		{"include_stop_str_in_output", `true`, true, false},
		{"include_stop_str_in_output", `false`, false, false},
		{"prompt_logprobs", `1`, true, false},
		{"allowed_token_ids", `[5]`, true, false},
		{"bad_words", `["x"]`, true, false},
		{"truncate_prompt_tokens", `8`, true, false},
		{"audio", `{"voice":"x","format":"wav"}`, true, true},
		{"modalities", `["text","audio"]`, true, true},
		{"modalities", `["text"]`, false, true},
		{"prediction", `{"type":"content","content":"x"}`, true, true},
		{"continue_final_message", `true`, true, true},
		{"add_generation_prompt", `false`, true, true},
		{"add_generation_prompt", `true`, false, true},
		{"chat_template", `"{{x}}"`, true, true},
		{"some_unknown_field", `{"anything":1}`, false, false},
	}
	for _, tc := range tests {
		for _, path := range []string{"/v1/completions", "/v1/chat/completions"} {
			chat := strings.Contains(path, "chat")
			if tc.chatOnly && !chat {
				continue
			}
			body := `{"prompt":"hi","max_tokens":2,"` + tc.field + `":` + tc.value + `}`
			if chat {
				body = `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"` + tc.field + `":` + tc.value + `}`
			}
			t.Run(path+" "+tc.field+"="+tc.value, func(t *testing.T) {
				f.t = t
				status, data := f.postWithin(30*time.Second, path, body)
				if !tc.refused {
					if status != 200 {
						t.Errorf("status %d: %s, want it accepted", status, data)
					}
					return
				}
				var e wireError
				if err := json.Unmarshal(data, &e); err != nil || e.Error == nil || status != 400 ||
					e.Error.Param != tc.field || !strings.Contains(e.Error.Message, tc.field) {
					t.Errorf("status %d, body %s; want a 400 naming %s", status, data, tc.field)
				}
			})
		}
	}
}

// TestRetrieveModel: GET /v1/models/{id} returns the model object of /v1/models' list
// (OpenAI's "retrieve model"); an unknown id is a 404 in OpenAI's error shape.
func TestRetrieveModel(t *testing.T) {
	f := start(t, options{})
	_, listBody := f.do("GET", "/v1/models", "")
	var list struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal(listBody, &list); err != nil || len(list.Data) != 1 {
		t.Fatalf("%s: %v", listBody, err)
	}
	resp, body := f.do("GET", "/v1/models/fake", "")
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s: %v", resp.StatusCode, body, err)
	}
	if diff := cmp.Diff(list.Data[0], got); diff != "" {
		t.Errorf("/v1/models/fake differs from its /v1/models entry (-list +got):\n%s", diff)
	}
	for _, id := range []string{"gpt-9", "org/fake", "fake%2Fx"} {
		resp, body := f.do("GET", "/v1/models/"+id, "")
		var e wireError
		if err := json.Unmarshal(body, &e); err != nil || e.Error == nil || resp.StatusCode != 404 ||
			e.Error.Type != "NotFoundError" || e.Error.Param != "model" || !strings.Contains(e.Error.Message, "does not exist") {
			t.Errorf("GET /v1/models/%s: %d %s, want a 404 NotFoundError", id, resp.StatusCode, body)
		}
	}
	if resp, _ := f.do("POST", "/v1/models/fake", "{}"); resp.StatusCode != 405 {
		t.Errorf("POST /v1/models/fake: %d, want 405", resp.StatusCode)
	}
}

// TestRetrieveModelWithSlash: Hugging Face model names hold a slash.
func TestRetrieveModelWithSlash(t *testing.T) {
	f := start(t, options{server: func(c *Config) { c.ModelName = "org/fake-7b" }})
	resp, body := f.do("GET", "/v1/models/org/fake-7b", "")
	var got struct {
		ID     string `json:"id"`
		Object string `json:"object"`
	}
	if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 200 || got.ID != "org/fake-7b" || got.Object != "model" {
		t.Errorf("GET /v1/models/org/fake-7b: %d %s", resp.StatusCode, body)
	}
	if resp, _ := f.do("GET", "/v1/models/org", ""); resp.StatusCode != 404 {
		t.Errorf("GET /v1/models/org: %d, want 404", resp.StatusCode)
	}
}
