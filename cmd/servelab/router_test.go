package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRouterOverRealEngines routes through two real engines with the precise prefix-cache
// scorer fed by their KV events: repeats of a long prompt follow the engine that cached it.
func TestRouterOverRealEngines(t *testing.T) {
	dir := synthTiny(t)
	a, b := startEngine(t, dir), startEngine(t, dir)
	f := routerFlags{endpoints: []string{a, b}, spec: "weighted:precise-prefix=10,queue=1,kv=1,prefix=0",
		scrape: 10 * time.Millisecond, blockSize: 16, model: dir, kvEvents: true}
	r, err := f.build()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r.Handler()}
	go srv.Serve(ln)
	defer srv.Close()
	url := "http://" + ln.Addr().String()

	prompt := strings.Repeat("The engine answers one token at a time and keeps its cache. ", 6)
	body := `{"prompt":"` + prompt + `","max_tokens":2,"temperature":0}`
	for i := range 6 {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %s", i, resp.Status)
		}
		time.Sleep(30 * time.Millisecond) // let the KV events reach the router
	}
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// Every request after the first lands where the prompt is cached.
	hitA := strings.Contains(string(metrics), `servelab_router_decisions_total{endpoint="`+a+`"} 6`)
	hitB := strings.Contains(string(metrics), `servelab_router_decisions_total{endpoint="`+b+`"} 6`)
	if !hitA && !hitB {
		t.Errorf("requests were split between the engines:\n%s", metrics)
	}
}
