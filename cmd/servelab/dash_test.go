package main

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"testing"
	"time"
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
