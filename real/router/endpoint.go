package router

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/internal/kvindex"
	"servelab/serving"
)

// endpoint is one engine as the router knows it.
type endpoint struct {
	index int
	url   string
	role  string // llm-d's role (route.RolePrefill, ...); "" for none
	host  string // url's host:port, for serving.ServedEndpointHeader
	// kvEvents and kvReplay are the endpoint's own ZeroMQ KV-event addresses (the
	// #kv-events= and kv-events-replay= of its spec; ParseEndpointKVEvents), "" for none.
	kvEvents, kvReplay string
	logf               func(format string, args ...any)
	// stop ends the endpoint's scrape and KV-event loops; loops counts them.
	stop  context.CancelFunc
	loops sync.WaitGroup
	// decisions is its servelab_router_decisions_total series: a request that was in flight
	// when the endpoint was removed counts on it without bringing the series back.
	decisions prometheus.Counter

	mu               sync.Mutex
	up               bool
	everUp           bool
	downCause        string // why the endpoint is down, as last logged
	eventsCause      string // why its KV events are unavailable, as last logged
	waiting, running int
	kvUsage          float64
	// cached is the prefix index fed by KV events, with the medium (tier) of each block;
	// nil until a snapshot arrived.
	cached *kvindex.Index
}

func (e *endpoint) healthy() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.up
}

// markDown takes the endpoint out of routing; it logs the transition, or a new cause while
// down, once.
func (e *endpoint) markDown(cause string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.up:
		e.logf("endpoint %s is down: %s; routing around it", e.url, cause)
	case cause != e.downCause && e.everUp:
		e.logf("endpoint %s is still down: %s", e.url, cause)
	case cause != e.downCause:
		e.logf("endpoint %s is not available: %s", e.url, cause)
	}
	e.up, e.downCause = false, cause
}

// markUp puts the endpoint (back) into routing, logging the transition.
func (e *endpoint) markUp() {
	if e.up {
		return
	}
	if e.everUp {
		e.logf("endpoint %s is back up", e.url)
	} else if e.downCause != "" {
		e.logf("endpoint %s is up", e.url)
	}
	e.up, e.everUp, e.downCause = true, true, ""
}

// eventsUnavailable logs, once per cause, why the endpoint's KV events cannot be followed.
func (e *endpoint) eventsUnavailable(cause string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if cause != e.eventsCause {
		e.logf("endpoint %s: KV events unavailable (%s); its prefix index is empty until they are", e.url, cause)
		e.eventsCause = cause
	}
}

func (e *endpoint) eventsSubscribed() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.eventsCause != "" {
		e.logf("endpoint %s: KV events subscribed", e.url)
		e.eventsCause = ""
	}
}

// cause is err in a few words that do not change between attempts, for logging once.
func cause(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	}
	return err.Error()
}

// statusCause explains an HTTP status from path.
func statusCause(path string, resp *http.Response) string {
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Sprintf("%s: %s: the endpoint wants an API key; give the router its key with --engine-api-key or SERVELAB_ENGINE_API_KEY", path, resp.Status)
	case http.StatusNotFound:
		return fmt.Sprintf("%s: %s: the endpoint does not serve it", path, resp.Status)
	}
	return fmt.Sprintf("%s: %s", path, resp.Status)
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

// prefixSet answers prefix queries from the KV-event index: a serving.TieredPrefixCache,
// so the precise prefix scorer weighs each hit by the tier holding it.
type prefixSet struct{ e *endpoint }

var _ serving.TieredPrefixCache = prefixSet{}

func (p prefixSet) CachedPrefixBlocks(hashes []uint64) int {
	p.e.mu.Lock()
	defer p.e.mu.Unlock()
	if p.e.cached == nil {
		return 0
	}
	return p.e.cached.CachedPrefixBlocks(hashes)
}

func (p prefixSet) CachedPrefixWeight(hashes []uint64, weight func(medium string) float64) float64 {
	p.e.mu.Lock()
	defer p.e.mu.Unlock()
	if p.e.cached == nil {
		return 0
	}
	return p.e.cached.CachedPrefixWeight(hashes, weight)
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
	r.authorize(req, nil)
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return errors.New("/metrics: " + cause(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(statusCause("/metrics", resp))
	}
	var fresh endpoint
	if err := parseMetrics(resp.Body, func(name string, v float64) { scraped[name](&fresh, v) }); err != nil {
		return fmt.Errorf("/metrics: %w", err)
	}
	e.mu.Lock()
	e.markUp()
	e.waiting, e.running, e.kvUsage = fresh.waiting, fresh.running, fresh.kvUsage
	e.mu.Unlock()
	return nil
}

func (r *Router) scrapeLoop(ctx context.Context, e *endpoint) {
	t := time.NewTicker(r.cfg.ScrapeInterval)
	defer t.Stop()
	for {
		if err := r.scrapeOnce(ctx, e); err != nil && ctx.Err() == nil {
			e.markDown(err.Error())
		} else if err == nil {
			r.flowScraped()
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
	r.authorize(req, nil)
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			e.eventsUnavailable("/v1/kv_events: " + cause(err))
		}
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e.eventsUnavailable(statusCause("/v1/kv_events", resp))
		return
	}
	e.eventsSubscribed()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var last uint64
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var batch kvEventBatch
		if json.Unmarshal([]byte(data), &batch) != nil || batch.Seq != last+1 {
			return // a gap or garbage: reconnect for a fresh snapshot
		}
		last = batch.Seq
		if err := e.apply(batch.Events); err != nil {
			e.eventsUnavailable(fmt.Sprintf("/v1/kv_events batch %d: %v", batch.Seq, err))
			return
		}
		if batch.Seq > 1 && batch.TS > 0 {
			// The first batch is the subscription's snapshot; the others are published
			// when the step that produced them ends.
			r.kvEventLag.Observe(time.Since(time.Unix(0, int64(batch.TS*1e9))).Seconds())
		}
	}
}

// kvEventBatch is a /v1/kv_events batch: vLLM's KVEventBatch, JSON-encoded.
type kvEventBatch struct {
	Seq    uint64    `json:"seq"`
	TS     float64   `json:"ts"`
	Events []kvEvent `json:"events"`
}

// kvEvent is one of vLLM's KV events: BlockStored, BlockRemoved or AllBlocksCleared, with
// the medium (tier) the blocks entered or left; none means the GPU (vLLM's None).
type kvEvent struct {
	Type        string   `json:"type"`
	BlockHashes []uint64 `json:"block_hashes"`
	Medium      string   `json:"medium"`
}

// apply updates the prefix index with events, as llm-d-kv-cache's index does
// (kvindex): per medium, so a block offloaded to CPU (BlockRemoved on the GPU, BlockStored
// on CPU) stays cached on CPU, and one removed from its last medium is forgotten.
func (e *endpoint) apply(events []kvEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range events {
		switch ev.Type {
		case "AllBlocksCleared":
			if e.cached == nil {
				e.cached = kvindex.New(0)
			}
			e.cached.Clear()
		case "BlockStored":
			if e.cached == nil {
				e.cached = kvindex.New(len(ev.BlockHashes))
			}
			if err := e.cached.Stored(ev.Medium, ev.BlockHashes); err != nil {
				return err
			}
		case "BlockRemoved":
			if e.cached != nil {
				e.cached.Removed(ev.Medium, ev.BlockHashes)
			}
		}
	}
	return nil
}
