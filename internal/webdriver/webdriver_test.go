package webdriver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeDriver answers the WebDriver commands this package sends, recording them.
type fakeDriver struct {
	mu       sync.Mutex
	requests []string
	bodies   map[string]map[string]any
}

func (f *fakeDriver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	var body map[string]any
	if r.Body != nil {
		raw, _ := io.ReadAll(r.Body)
		json.Unmarshal(raw, &body)
	}
	f.bodies[r.Method+" "+r.URL.Path] = body
	f.mu.Unlock()
	reply := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]any{"value": v})
	}
	switch r.Method + " " + r.URL.Path {
	case "POST /session":
		reply(200, map[string]any{"sessionId": "abc", "capabilities": map[string]any{}})
	case "POST /session/abc/url", "DELETE /session/abc", "POST /session/abc/window/rect":
		reply(200, nil)
	case "POST /session/abc/execute/sync":
		if strings.Contains(body["script"].(string), "throw") {
			reply(500, map[string]any{"error": "javascript error", "message": "boom"})
			return
		}
		args := body["args"].([]any)
		reply(200, map[string]any{"sum": args[0].(float64) + args[1].(float64)})
	case "GET /session/abc/screenshot":
		reply(200, base64.StdEncoding.EncodeToString([]byte("\x89PNG fake")))
	default:
		reply(404, map[string]any{"error": "unknown command", "message": r.URL.Path})
	}
}

func TestProtocolAgainstAFakeServer(t *testing.T) {
	fake := &fakeDriver{bodies: map[string]map[string]any{}}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx := context.Background()
	d := Connect(srv.URL + "/")
	s, err := d.NewSession(ctx, Options{Binary: "/usr/bin/chromium", Args: HeadlessArgs("/tmp/p")})
	if err != nil {
		t.Fatal(err)
	}
	if s.ID() != "abc" {
		t.Fatalf("session id %q", s.ID())
	}
	caps := fake.bodies["POST /session"]["capabilities"].(map[string]any)["alwaysMatch"].(map[string]any)
	chrome := caps["goog:chromeOptions"].(map[string]any)
	if chrome["binary"] != "/usr/bin/chromium" || !slices.Contains(chrome["args"].([]any), any("--headless")) ||
		!slices.Contains(chrome["args"].([]any), any("--user-data-dir=/tmp/p")) {
		t.Errorf("chromeOptions %v", chrome)
	}
	if err := s.Navigate(ctx, "http://127.0.0.1:1/x"); err != nil {
		t.Fatal(err)
	}
	if got := fake.bodies["POST /session/abc/url"]["url"]; got != "http://127.0.0.1:1/x" {
		t.Errorf("navigate sent url %v", got)
	}
	var res struct{ Sum float64 }
	if err := s.Execute(ctx, "return {sum: arguments[0] + arguments[1]}", []any{2, 3}, &res); err != nil {
		t.Fatal(err)
	}
	if res.Sum != 5 {
		t.Errorf("sum %v", res.Sum)
	}
	err = s.Execute(ctx, "throw new Error('boom')", nil, nil)
	var werr *Error
	if !errors.As(err, &werr) || werr.Code != "javascript error" || werr.Message != "boom" || werr.Status != 500 {
		t.Errorf("script error %#v", err)
	}
	shot, err := s.Screenshot(ctx)
	if err != nil || string(shot) != "\x89PNG fake" {
		t.Errorf("screenshot %q %v", shot, err)
	}
	if _, err := s.Title(ctx); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("unknown command answered %v", err)
	}
	if err := s.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"POST /session", "POST /session/abc/url", "POST /session/abc/execute/sync",
		"POST /session/abc/execute/sync", "GET /session/abc/screenshot", "GET /session/abc/title", "DELETE /session/abc"}
	if !slices.Equal(fake.requests, want) {
		t.Errorf("requests %v\nwant %v", fake.requests, want)
	}
}

func TestNotAWebDriverServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "teapot", http.StatusTeapot)
	}))
	defer srv.Close()
	_, err := Connect(srv.URL).NewSession(context.Background(), Options{})
	if err == nil || !strings.Contains(err.Error(), "not a WebDriver response") {
		t.Fatalf("got %v", err)
	}
}

// TestChromium drives the real headless browser, where chromedriver and Chromium are
// installed (.ci/run installs Debian's chromium and chromium-driver).
func TestChromium(t *testing.T) {
	driverPath, browser, err := Find()
	if err != nil {
		t.Skipf("headless browser test skipped: %v", err)
	}
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><title>wd test</title><body style="background:#08c">
<h1 id=h>hello</h1><script>document.getElementById('h').dataset.n = String(6 * 7);</script>`)
	}))
	defer page.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := Start(ctx, driverPath)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := d.NewSession(ctx, Options{Binary: browser, Args: HeadlessArgs(t.TempDir())})
	if err != nil {
		t.Fatalf("%v\nchromedriver log:\n%s", err, d.Log())
	}
	defer s.Quit(ctx)
	if err := s.SetWindowSize(ctx, 640, 480); err != nil {
		t.Fatal(err)
	}
	if err := s.Navigate(ctx, page.URL); err != nil {
		t.Fatal(err)
	}
	if title, err := s.Title(ctx); err != nil || title != "wd test" {
		t.Errorf("title %q %v", title, err)
	}
	var got struct {
		Text string `json:"text"`
		N    string `json:"n"`
		Arg  int    `json:"arg"`
	}
	if err := s.Execute(ctx, `const h = document.getElementById('h');
return {text: h.textContent, n: h.dataset.n, arg: arguments[0] * 2};`, []any{21}, &got); err != nil {
		t.Fatal(err)
	}
	if got.Text != "hello" || got.N != "42" || got.Arg != 42 {
		t.Errorf("script saw %+v", got)
	}
	var later string
	if err := s.ExecuteAsync(ctx, `const done = arguments[arguments.length - 1];
setTimeout(() => done(document.title + '!'), 50);`, nil, &later); err != nil || later != "wd test!" {
		t.Errorf("async script %q %v", later, err)
	}
	var werr *Error
	if err := s.Execute(ctx, "throw new Error('boom')", nil, nil); !errors.As(err, &werr) || werr.Code != "javascript error" {
		t.Errorf("throwing script: %v", err)
	}
	shot, err := s.Screenshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("screenshot %v", b)
	}
	if err := s.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	select {
	case <-d.waited:
	default:
		t.Error("chromedriver still running after Close")
	}
}
