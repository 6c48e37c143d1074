package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestDashServesOnLoopbackAndStops(t *testing.T) {
	runs := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	var out syncBuffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"dash", "--port", "0", "--runs", runs})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	urlRE := regexp.MustCompile(`http://127\.0\.0\.1:\d+/`)
	var url string
	for deadline := time.Now().Add(10 * time.Second); url == ""; time.Sleep(10 * time.Millisecond) {
		url = urlRE.FindString(out.String())
		if time.Now().After(deadline) {
			t.Fatalf("no URL printed: %q", out.String())
		}
	}
	resp, err := http.Get(url + "api/runs")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		RunsDir     string `json:"runs_dir"`
		Experiments []any  `json:"experiments"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if resp.StatusCode != 200 || list.RunsDir != runs || len(list.Experiments) != 0 {
		t.Errorf("GET /api/runs: %d %+v", resp.StatusCode, list)
	}
	// Bound to loopback, it answers only requests addressed to a loopback name.
	req, _ := http.NewRequest("GET", url+"api/runs", nil)
	req.Host = "attacker.example"
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign Host: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dash did not stop")
	}
}

func TestDashRefusesMissingRunsDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct{ runs, want string }{
		{filepath.Join(dir, "rnus"), "rnus: no such directory"},
		{file, "not a directory"},
	} {
		done := make(chan error, 1)
		go func() {
			_, err := run(t, "dash", "--port", "0", "--runs", tc.runs)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.runs) {
				t.Errorf("--runs %s: %v, want an error naming it with %q", tc.runs, err, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("--runs %s: dash started serving", tc.runs)
		}
	}
}

// TestDashServerLimits serves through the dashboard's http.Server settings: a websocket
// lives past the read and idle timeouts, holds its in-flight slot (the next request is
// refused), and a client trickling its body is cut off.
func TestDashServerLimits(t *testing.T) {
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil || c.WriteMessage(typ, msg) != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	srv, err := dashLimits{read: 200 * time.Millisecond, idle: 200 * time.Millisecond, maxInFlight: 1}.server(mux)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	addr := ln.Addr().String()

	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := 0; time.Since(start) < time.Second; i++ {
		want := fmt.Sprint("message ", i)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(want)); err != nil {
			t.Fatalf("after %v: %v", time.Since(start), err)
		}
		if _, got, err := ws.ReadMessage(); err != nil || string(got) != want {
			t.Fatalf("after %v: %q, %v", time.Since(start), got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("with the one slot taken: status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	ws.Close()

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
	cut := make(chan error, 1)
	go func() {
		for {
			if _, err := conn.Write([]byte(" ")); err != nil {
				cut <- err
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	select {
	case <-cut:
	case <-time.After(20 * time.Second):
		t.Fatal("a trickling client is still connected after 20 s")
	}
}
