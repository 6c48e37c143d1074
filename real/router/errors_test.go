package router

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/route"
)

// openAIError is OpenAI's error body.
type openAIError struct {
	Error *struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Param   any    `json:"param"`
		Code    any    `json:"code"`
	} `json:"error"`
}

// decodeError checks that resp carries an OpenAI error body and returns its type.
func decodeError(t *testing.T, resp *http.Response) string {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, body %q", ct, body)
	}
	var raw map[string]map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("body %q is not JSON: %v", body, err)
	}
	var keys []string
	for k := range raw["error"] {
		keys = append(keys, k)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := raw["error"][k]; !ok {
			t.Errorf("body %q lacks error.%s", body, k)
		}
	}
	var e openAIError
	json.Unmarshal(body, &e)
	if e.Error == nil || e.Error.Message == "" {
		t.Errorf("body %q has no error message", body)
		return ""
	}
	if code, ok := e.Error.Code.(float64); !ok || int(code) != resp.StatusCode {
		t.Errorf("error.code %v, want the status %d", e.Error.Code, resp.StatusCode)
	}
	return e.Error.Type
}

func TestRouterErrorsAreOpenAIJSON(t *testing.T) {
	up := newStub(t, "a")
	close(up.release)
	_, url, _ := newRouter(t, "round-robin", 5*time.Millisecond, up.URL)
	// A router whose only endpoint never answers.
	p, _ := route.Parse("round-robin", policies.Env{Seed: 1, BlockSize: 16})
	dead, err := New(Config{Endpoints: []string{"http://127.0.0.1:1"}, Policy: p, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dead.Close)
	deadURL := serve(t, dead.Handler())

	for _, tc := range []struct {
		name, method, url, body string
		status                  int
		typ                     string
	}{
		{"unknown path", "GET", url + "/v2/nothing", "", 404, "NotFoundError"},
		{"root", "GET", url + "/", "", 404, "NotFoundError"},
		{"completions by GET", "GET", url + "/v1/completions", "", 405, "MethodNotAllowed"},
		{"chat by PUT", "PUT", url + "/v1/chat/completions", "{}", 405, "MethodNotAllowed"},
		{"models by POST", "POST", url + "/v1/models", "{}", 405, "MethodNotAllowed"},
		{"model by DELETE", "DELETE", url + "/v1/models/m", "", 405, "MethodNotAllowed"},
		{"bad JSON", "POST", url + "/v1/completions", `{"prompt": "x"`, 400, "BadRequestError"},
		{"empty body", "POST", url + "/v1/chat/completions", "", 400, "BadRequestError"},
		{"too large", "POST", url + "/v1/completions", `{"prompt":"` + strings.Repeat("x", 33<<20) + `"}`, 413, "RequestTooLargeError"},
		{"unknown model", "GET", url + "/v1/models/nope", "", 404, "NotFoundError"},
		{"no endpoint: completions", "POST", deadURL + "/v1/completions", `{"prompt":"x"}`, 503, "ServiceUnavailableError"},
		{"no endpoint: models", "GET", deadURL + "/v1/models", "", 503, "ServiceUnavailableError"},
		{"no endpoint: model", "GET", deadURL + "/v1/models/m", "", 503, "ServiceUnavailableError"},
		{"no endpoint: health", "GET", deadURL + "/health", "", 503, "ServiceUnavailableError"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, tc.url, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if typ := decodeError(t, resp); typ != tc.typ {
				t.Errorf("error.type %q, want %q", typ, tc.typ)
			}
			if tc.status == 405 && resp.Header.Get("Allow") == "" {
				t.Error("a 405 without an Allow header")
			}
		})
	}
	if up.hits != 0 {
		t.Errorf("%d erroneous requests reached the endpoint", up.hits)
	}
}

func TestGetModelByID(t *testing.T) {
	up := newStub(t, "a")
	_, url, _ := newRouter(t, "round-robin", 5*time.Millisecond, up.URL)
	resp, err := http.Get(url + "/v1/models/m")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var card map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&card); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	want := map[string]any{"id": "m", "object": "model", "owned_by": "stub", "max_model_len": float64(512)}
	if d := cmp.Diff(want, card); d != "" {
		t.Errorf("model card (-want +got):\n%s", d)
	}
}
