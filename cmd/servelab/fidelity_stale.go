package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// kvEventLag reads the router's servelab_router_kv_event_lag_seconds at routerURL and
// returns its mean in seconds and how many KV-event batches it counts: how late, in this
// run, the real router's prefix index learned what the engines' steps cached, the delay the
// simulator models with ClusterSpec.KVEventDelay.
func kvEventLag(ctx context.Context, routerURL string) (mean float64, batches int, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, routerURL+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("router /metrics: %s", resp.Status)
	}
	return parseKVEventLag(resp.Body)
}

func parseKVEventLag(r io.Reader) (mean float64, batches int, err error) {
	const name = "servelab_router_kv_event_lag_seconds"
	var sum, count float64
	found := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || (key != name+"_sum" && key != name+"_count") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return 0, 0, fmt.Errorf("router /metrics: %s: %v", key, err)
		}
		if key == name+"_sum" {
			sum = v
		} else {
			count = v
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if found < 2 {
		return 0, 0, fmt.Errorf("router /metrics: no %s", name)
	}
	if count > 0 {
		mean = sum / count
	}
	return mean, int(count), nil
}
