package router

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"servelab/serving"
)

// endpoint is one engine as the router knows it.
type endpoint struct {
	index int
	url   string

	mu               sync.Mutex
	up               bool
	waiting, running int
	kvUsage          float64
	// cached is the prefix index fed by KV events; nil until a snapshot arrived.
	cached map[uint64]struct{}
}

func (e *endpoint) healthy() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.up
}

func (e *endpoint) markDown() {
	e.mu.Lock()
	e.up = false
	e.mu.Unlock()
}

// view is the routing policy's picture of the endpoint.
func (e *endpoint) view() serving.InstanceView {
	e.mu.Lock()
	defer e.mu.Unlock()
	v := serving.InstanceView{Index: e.index, Name: e.url, Waiting: e.waiting, Running: e.running, KVUsage: e.kvUsage}
	if e.cached != nil {
		v.Cache = prefixSet{e}
	}
	return v
}

// prefixSet answers prefix queries from the KV-event index.
type prefixSet struct{ e *endpoint }

func (p prefixSet) CachedPrefixBlocks(hashes []uint64) int {
	p.e.mu.Lock()
	defer p.e.mu.Unlock()
	for i, h := range hashes {
		if _, ok := p.e.cached[h]; !ok {
			return i
		}
	}
	return len(hashes)
}

// vLLM's gauges the views are built from; values are summed over label sets (engines).
var scraped = map[string]func(e *endpoint, v float64){
	"vllm:num_requests_waiting": func(e *endpoint, v float64) { e.waiting += int(v) },
	"vllm:num_requests_running": func(e *endpoint, v float64) { e.running += int(v) },
	"vllm:kv_cache_usage_perc":  func(e *endpoint, v float64) { e.kvUsage = max(e.kvUsage, v) },
	// Older vLLM releases.
	"vllm:gpu_cache_usage_perc": func(e *endpoint, v float64) { e.kvUsage = max(e.kvUsage, v) },
}

// parseMetrics reads the Prometheus text format's samples of the gauges above.
func parseMetrics(r io.Reader, f func(name string, v float64)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		if _, ok := scraped[name]; !ok {
			continue
		}
		rest := line[len(name):]
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return fmt.Errorf("metric %s: no value in %q", name, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return fmt.Errorf("metric %s: %v", name, err)
		}
		f(name, v)
	}
	return sc.Err()
}

func (r *Router) scrapeOnce(ctx context.Context, e *endpoint) error {
	ctx, cancel := context.WithTimeout(ctx, max(time.Second, 10*r.cfg.ScrapeInterval))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/metrics", nil)
	if err != nil {
		return err
	}
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/metrics: %s", e.url, resp.Status)
	}
	var fresh endpoint
	if err := parseMetrics(resp.Body, func(name string, v float64) { scraped[name](&fresh, v) }); err != nil {
		return err
	}
	e.mu.Lock()
	e.up = true
	e.waiting, e.running, e.kvUsage = fresh.waiting, fresh.running, fresh.kvUsage
	e.mu.Unlock()
	return nil
}

func (r *Router) scrapeLoop(ctx context.Context, e *endpoint) {
	t := time.NewTicker(r.cfg.ScrapeInterval)
	defer t.Stop()
	for {
		if err := r.scrapeOnce(ctx, e); err != nil {
			e.markDown()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// eventLoop keeps the endpoint's prefix index from /v1/kv_events, reconnecting (for a fresh
// snapshot) whenever the stream ends.
func (r *Router) eventLoop(ctx context.Context, e *endpoint) {
	for ctx.Err() == nil {
		r.followEvents(ctx, e)
		e.mu.Lock()
		e.cached = nil
		e.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *Router) followEvents(ctx context.Context, e *endpoint) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/kv_events", nil)
	if err != nil {
		return
	}
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var last uint64
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var batch struct {
			Seq    uint64 `json:"seq"`
			Events []struct {
				Type        string   `json:"type"`
				BlockHashes []uint64 `json:"block_hashes"`
			} `json:"events"`
		}
		if json.Unmarshal([]byte(data), &batch) != nil || batch.Seq != last+1 {
			return // a gap or garbage: reconnect for a fresh snapshot
		}
		last = batch.Seq
		e.mu.Lock()
		for _, ev := range batch.Events {
			switch ev.Type {
			case "AllBlocksCleared":
				e.cached = map[uint64]struct{}{}
			case "BlockStored":
				if e.cached == nil {
					e.cached = map[uint64]struct{}{}
				}
				for _, h := range ev.BlockHashes {
					e.cached[h] = struct{}{}
				}
			case "BlockRemoved":
				for _, h := range ev.BlockHashes {
					delete(e.cached, h)
				}
			}
		}
		e.mu.Unlock()
	}
}
