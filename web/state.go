package web

import (
	"encoding/json"
	"math"
	"strconv"

	"servelab/experiments"
	"servelab/metrics"
)

// Run and cell statuses.
const (
	StatusNew         = "new"         // no event yet
	StatusPending     = "pending"     // a cell not started
	StatusRunning     = "running"     // started, not finished
	StatusDone        = "done"        // finished; for a run, every cell done
	StatusFailed      = "failed"      // a run that finished with failed cells, or could not start
	StatusError       = "error"       // a cell that failed
	StatusInterrupted = "interrupted" // a run whose events stopped without experiment_done
)

// runState is what the dashboard knows of a run from its events: the run's and each cell's
// status and progress and, when samples are kept, every cell's time series (at most
// maxSamples points each: past that, every other point is dropped and only every 2nd, 4th,
// ... sample is kept from then on).
type runState struct {
	experiment string
	status     string
	err        string
	cells      []*cellState
	byID       map[string]*cellState
	// prefixHashes is whether the workload carries prefix hash ids, as experiment_start
	// said; nil when no event said (not started, or an older servelab's run).
	prefixHashes *bool
	// maxSamples bounds each cell's series; 0 keeps none (status only).
	maxSamples int
}

type cellState struct {
	experiments.Cell
	known    bool // the spec lists the cell (Cell's fields are set)
	status   string
	progress float64
	err      string
	summary  *metrics.Summary
	samples  []experiments.Sample
	stride   int // keep every stride-th sample
	seen     int // samples received since the cell started
	// sent is how many samples the clients were last sent; dirty marks a change since.
	sent  int
	dirty bool
}

func newRunState(cells []experiments.Cell, maxSamples int) *runState {
	st := &runState{status: StatusNew, byID: map[string]*cellState{}, maxSamples: maxSamples}
	for _, c := range cells {
		st.add(c.ID).Cell, st.byID[c.ID].known = c, true
	}
	return st
}

func (st *runState) add(id string) *cellState {
	c := st.byID[id]
	if c == nil {
		c = &cellState{Cell: experiments.Cell{ID: id}, status: StatusPending, stride: 1}
		st.byID[id] = c
		st.cells = append(st.cells, c)
	}
	return c
}

// apply folds one event into the state; it reports whether anything changed.
func (st *runState) apply(ev experiments.Event) bool {
	if st.status == StatusInterrupted {
		st.status = StatusRunning // its events go on after all
	}
	switch ev.Kind {
	case experiments.ExperimentStart:
		st.experiment, st.status, st.err = ev.Experiment, StatusRunning, ""
		st.prefixHashes = ev.PrefixHashes
		return true
	case experiments.ExperimentDone:
		st.status, st.err = StatusDone, ev.Error
		if ev.Error != "" {
			st.status = StatusFailed
		}
		return true
	}
	if ev.Cell == "" {
		return false
	}
	c := st.add(ev.Cell)
	c.dirty = true
	switch ev.Kind {
	case experiments.CellStart:
		c.status, c.progress, c.err, c.summary = StatusRunning, 0, "", nil
		c.samples, c.stride, c.seen, c.sent = c.samples[:0], 1, 0, 0
	case experiments.CellSample:
		c.status, c.progress = StatusRunning, ev.Progress
		if ev.Sample != nil && st.maxSamples > 0 {
			c.addSample(*ev.Sample, st.maxSamples)
		}
	case experiments.CellDone, experiments.CellSkipped:
		c.status, c.progress, c.summary, c.err = StatusDone, 1, ev.Summary, ""
	case experiments.CellError:
		c.status, c.err = StatusError, ev.Error
	default:
		c.dirty = false
		return false
	}
	return true
}

func (c *cellState) addSample(s experiments.Sample, max int) {
	keep := c.seen%c.stride == 0
	c.seen++
	if !keep {
		return
	}
	if len(c.samples) >= max {
		// Halve the series: keep samples 0, 2, 4, ..., and from now on every 2*stride-th.
		n := 0
		for i := 0; i < len(c.samples); i += 2 {
			c.samples[n] = c.samples[i]
			n++
		}
		c.samples, c.stride, c.sent = c.samples[:n], c.stride*2, 0
		if (c.seen-1)%c.stride != 0 {
			return
		}
	}
	c.samples = append(c.samples, s)
}

// counts are the cells finished (done) and failed.
func (st *runState) counts() (done, failed int) {
	for _, c := range st.cells {
		switch c.status {
		case StatusDone:
			done++
		case StatusError:
			failed++
		}
	}
	return done, failed
}

// progress is the fraction of cells finished, each counted by its own progress.
func (st *runState) progress() float64 {
	if len(st.cells) == 0 {
		if st.status == StatusDone {
			return 1
		}
		return 0
	}
	var sum float64
	for _, c := range st.cells {
		if c.status == StatusError {
			sum++
		} else {
			sum += c.progress
		}
	}
	return sum / float64(len(st.cells))
}

// message is what the websocket carries: a snapshot (every cell, every sample) or an update
// (the cells changed since the last update, with their samples from index From on). Both are
// absolute: a client sets a cell's series to its first From samples and appends Samples, so
// applying a message twice, or an update over a newer snapshot, leaves the same view.
type message struct {
	Type       string    `json:"type"` // "snapshot" or "update"
	Seq        uint64    `json:"seq"`
	Run        string    `json:"run"`
	Experiment string    `json:"experiment"`
	Status     string    `json:"status"`
	Error      string    `json:"error,omitempty"`
	Progress   float64   `json:"progress"`
	Fields     []string  `json:"fields,omitempty"`
	Cells      []cellMsg `json:"cells"`
	// PrefixHashes is whether the workload carries prefix hash ids; absent when not known.
	// Without them the prefix cache cannot hit, and the page says so instead of drawing a
	// hit-rate chart of zeros.
	PrefixHashes *bool `json:"prefix_hashes,omitempty"`
}

type cellMsg struct {
	ID string `json:"id"`
	// Cell is the cell's policies (snapshots only, when the spec is known).
	Cell     *experiments.Cell `json:"cell,omitempty"`
	Status   string            `json:"status"`
	Progress float64           `json:"progress"`
	Error    string            `json:"error,omitempty"`
	Summary  *metrics.Summary  `json:"summary,omitempty"`
	From     int               `json:"from"`
	Samples  sampleRows        `json:"samples"`
}

// sampleFields are the columns of a sample row on the websocket, in experiments.Sample's
// JSON names.
var sampleFields = []string{"t", "completed", "request_throughput", "output_throughput",
	"num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_hit_rate", "ttft_p50_ms"}

// sampleRows encode as arrays in sampleFields' order, a third the size of objects.
type sampleRows []experiments.Sample

func (rows sampleRows) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 2+len(rows)*96)
	b = append(b, '[')
	for i, s := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '[')
		b = appendFloat(b, s.Time)
		b = append(b, ',')
		b = strconv.AppendInt(b, int64(s.Completed), 10)
		b = append(b, ',')
		b = appendFloat(b, s.RequestThroughput)
		b = append(b, ',')
		b = appendFloat(b, s.OutputThroughput)
		b = append(b, ',')
		b = strconv.AppendInt(b, int64(s.Running), 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, int64(s.Waiting), 10)
		b = append(b, ',')
		b = appendFloat(b, s.KVCacheUsage)
		b = append(b, ',')
		b = appendFloat(b, s.PrefixCacheHitRate)
		b = append(b, ',')
		b = appendFloat(b, s.TTFTP50Ms)
		b = append(b, ']')
	}
	return append(b, ']'), nil
}

// appendFloat writes x as JSON, null when it is not finite.
func appendFloat(b []byte, x float64) []byte {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, x, 'g', -1, 64)
}

// snapshot is the whole state; it marks every cell sent.
func (st *runState) snapshot(run string, seq uint64) *message {
	m := st.header("snapshot", run, seq)
	m.Fields = sampleFields
	m.Cells = make([]cellMsg, len(st.cells))
	for i, c := range st.cells {
		m.Cells[i] = c.msg(0)
		if c.known {
			cell := c.Cell
			m.Cells[i].Cell = &cell
		}
	}
	return m
}

// update is the cells changed since the last update, or nil when none did; it marks them
// sent.
func (st *runState) update(run string, seq uint64) *message {
	m := st.header("update", run, seq)
	for _, c := range st.cells {
		if c.dirty {
			m.Cells = append(m.Cells, c.msg(c.sent))
			c.dirty, c.sent = false, len(c.samples)
		}
	}
	return m
}

func (st *runState) header(kind, run string, seq uint64) *message {
	return &message{Type: kind, Seq: seq, Run: run, Experiment: st.experiment, Status: st.status,
		Error: st.err, Progress: st.progress(), Cells: []cellMsg{}, PrefixHashes: st.prefixHashes}
}

// msg is the cell with its samples from index from on, copied (the state goes on changing
// while the message is encoded).
func (c *cellState) msg(from int) cellMsg {
	from = min(from, len(c.samples))
	return cellMsg{ID: c.ID, Status: c.status, Progress: c.progress, Error: c.err, Summary: c.summary,
		From: from, Samples: append(sampleRows{}, c.samples[from:]...)}
}

// encode is the message as JSON; a message that cannot be (a summary with a NaN) becomes
// one that tells the client so.
func encode(m *message) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"type": "error", "error": "encoding the run's state: " + err.Error()})
	}
	return b
}
