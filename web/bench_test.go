package web

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"servelab/experiments"
)

// benchSpec is 12 cells of the shipped Azure slice: about a second of simulation on two
// cores, at the default sample interval (span/200).
func benchSpec(b *testing.B, dir string) string {
	return writeFile(b, filepath.Join(dir, "bench.yaml"), fmt.Sprintf("name: bench\n"+
		"workload: {trace: %s, rate_scale: 4}\ncluster: {instances: 4, model: llama-3.1-8b, gpu: a100-80g}\n"+
		"policies: {routers: [round-robin, least-request, weighted], evict: [lru, lfu]}\nseeds: [1, 2]\n", azureSlice))
}

// BenchmarkDashboard runs the same experiment with and without the dashboard attached,
// alternately: with it, the run feeds the hub in-process (the production push cadence,
// 100 ms) and four websocket clients on loopback watch it, three reading and one that
// never reads (its socket buffers shrunk so it is stuck at once). It reports the updates a
// reading client got per second of run, and how much longer the run took with the
// dashboard than without (the targets: at least 5 pushes/s, at most 10% slowdown).
func BenchmarkDashboard(b *testing.B) {
	specDir := b.TempDir()
	specPath := benchSpec(b, specDir)
	spec, err := experiments.Load(specPath)
	if err != nil {
		b.Fatal(err)
	}
	norm, _ := spec.Normalized()
	d := newTestDash(b, func(s *Server) { s.connHook = smallBuffers })
	d.srv.opt = hubOptions{}.withDefaults() // the production cadence, not the tests' 20 ms
	d.srv.cfg.Parallel = 0
	d.srv.specDirs = []string{specDir}
	plainOut := b.TempDir()

	var plain, dash time.Duration
	var updates int64
	b.ResetTimer()
	for i := range b.N {
		// Without the dashboard.
		start := time.Now()
		if _, err := experiments.Run(context.Background(), spec, experiments.Options{Out: filepath.Join(plainOut, fmt.Sprint(i))}); err != nil {
			b.Fatal(err)
		}
		plain += time.Since(start)

		// With it: the clients connect first, as open tabs would be.
		id := fmt.Sprintf("bench-%d", i)
		writeFile(b, filepath.Join(d.runs, id, "spec.yaml"), string(norm))
		var readers []*benchReader
		for range 3 {
			r, err := dialReader(d, id)
			if err != nil {
				b.Fatal(err)
			}
			readers = append(readers, r)
		}
		stuck, _, err := smallBufferDialer.Dial("ws"+strings.TrimPrefix(d.hs.URL, "http")+"/api/runs/"+id+"/ws", nil)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range readers {
			r.waitSnapshot(b)
		}
		before := readers[0].updates.Load()
		start = time.Now()
		job, err := d.srv.Start(StartRequest{Spec: specPath, Out: id})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := job.Wait(); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		dash += took
		updates += readers[0].updates.Load() - before
		stuck.Close()
		for _, r := range readers {
			r.conn.Close()
		}
		os.RemoveAll(filepath.Join(plainOut, fmt.Sprint(i)))
	}
	b.StopTimer()
	b.ReportMetric(float64(updates)/dash.Seconds(), "pushes/s")
	b.ReportMetric(100*(dash.Seconds()/plain.Seconds()-1), "slowdown_%")
	b.ReportMetric(plain.Seconds()/float64(b.N), "plain_s/run")
	b.ReportMetric(dash.Seconds()/float64(b.N), "dash_s/run")
}

// benchReader reads a run's websocket, counting updates.
type benchReader struct {
	conn      *websocket.Conn
	snapshots atomic.Int64
	updates   atomic.Int64
}

func dialReader(d *testDash, id string) (*benchReader, error) {
	conn, _, err := d.dial(id, "")
	if err != nil {
		return nil, err
	}
	r := &benchReader{conn: conn}
	go func() {
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			var m struct {
				Type string `json:"type"`
			}
			json.Unmarshal(msg, &m)
			switch m.Type {
			case "snapshot":
				r.snapshots.Add(1)
			case "update":
				r.updates.Add(1)
			}
		}
	}()
	return r, nil
}

func (r *benchReader) waitSnapshot(b *testing.B) {
	waitFor(b, "a snapshot", func() bool { return r.snapshots.Load() > 0 })
}

// BenchmarkHubApply is the cost of one event to the run that emits it (its OnEvent), with
// ten clients attached.
func BenchmarkHubApply(b *testing.B) {
	h := newHub("r", testCells, hubOptions{})
	defer h.close()
	for range 10 {
		h.subscribe(newFakeSink())
	}
	s := sample(3)
	ev := experiments.Event{Cell: testCells[0].ID, Kind: experiments.CellSample, Progress: 0.5, Sample: &s}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		h.Apply(ev)
	}
}
