package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sync"

	"servelab/policies/scale"
)

// scaleLogEntry is one line of --scale-log: a scaling decision, in the same form from
// servelab sim --autoscale and servelab up --autoscale, so the two runs compare line by line.
type scaleLogEntry struct {
	// T is seconds since the run began (simulated, or since up's autoscaler started).
	T        float64  `json:"t"`
	Replicas int      `json:"replicas"`
	Ready    int      `json:"ready"`
	Desired  int      `json:"desired"`
	Metric   *float64 `json:"metric,omitempty"`
	Waiting  int      `json:"waiting"`
	Running  int      `json:"running"`
	KVUsage  float64  `json:"kv_usage"`
	Arrived  int      `json:"arrived"`
	// Finished and MetSLO are the requests finished since the previous decision and those
	// that met their SLO (in up, the router's servelab_router_slo_requests_total).
	Finished int    `json:"finished"`
	MetSLO   int    `json:"met_slo"`
	Start    []int  `json:"start,omitempty"`
	Cancel   []int  `json:"cancel,omitempty"`
	Drain    []int  `json:"drain,omitempty"`
	Reason   string `json:"reason"`
}

// scaleLog writes decisions as JSON lines; safe for concurrent use.
type scaleLog struct {
	mu  sync.Mutex
	f   *os.File
	enc *json.Encoder
	err error
}

func openScaleLog(path string) (*scaleLog, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--scale-log: %w", err)
	}
	return &scaleLog{f: f, enc: json.NewEncoder(f)}, nil
}

func (l *scaleLog) write(o scale.Observation, d scale.Decision, a scale.Actions) error {
	e := scaleLogEntry{T: o.Time, Replicas: o.Replicas, Ready: o.Ready, Desired: d.Replicas,
		Waiting: o.Waiting, Running: o.Running, KVUsage: o.KVUsage, Arrived: o.Arrived,
		Finished: o.Finished, MetSLO: o.MetSLO,
		Start: a.Start, Cancel: a.Cancel, Drain: a.Drain, Reason: d.Reason}
	if !math.IsNaN(d.Metric) {
		m := d.Metric
		e.Metric = &m
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.enc.Encode(e); err != nil && l.err == nil {
		l.err = err
	}
	return l.err
}

func (l *scaleLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.f.Close(); l.err == nil {
		l.err = err
	}
	return l.err
}

var _ io.Closer = (*scaleLog)(nil)
