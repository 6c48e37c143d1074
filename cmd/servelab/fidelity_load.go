package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"servelab/real/bench"
	"servelab/real/local"
	"servelab/serving"
	"servelab/traces"
)

// sliceScales resolves the prompts' and outputs' token scales of the compared slice, whose
// shape is scan, for an engine with context maxLen, and reads the slice once through them
// to count what they do to it: the rows clipped to the context and the outputs raised to
// 2 tokens, which the report prints.
func (f *fidelityFlags) sliceScales(scan traces.Shape, maxLen, blockSize int) (tokenScales, sliceShape, error) {
	in, err := resolveTokenScale(f.tokenScale, scan, maxLen, blockSize)
	if err != nil {
		return tokenScales{}, sliceShape{}, err
	}
	out, err := resolveOutputTokenScale(f.outputScale, scan, in, maxLen)
	if err != nil {
		return tokenScales{}, sliceShape{}, err
	}
	scales := tokenScales{Input: in, Output: out, Clip: maxLen}
	r, closer, err := traces.Open(f.trace, traces.Format(f.format))
	if err != nil {
		return tokenScales{}, sliceShape{}, err
	}
	defer closer.Close()
	r, shaped := scales.apply(traces.Limit(r, f.maxRequests))
	for {
		if _, err := r.Next(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return tokenScales{}, sliceShape{}, err
		}
	}
	return scales, shaped(), nil
}

// The real cluster's capacity. fidelity chose its offered load from the simulator's
// capacity, so a "load 0.7" run overloaded the real engines whenever the simulator was
// optimistic (15.6 req/s measured against 30.5 offered), and two runs picked rate scales
// of 70 and 84. It now measures the capacity of the real cluster on the slice's own requests
// and offers --load times that.

// capacityProbe says how the capacity is measured: closed loop bursts of the slice's
// requests with Concurrency in flight, each sending for Duration, Repeats times.
type capacityProbe struct {
	Concurrency int
	Duration    time.Duration
	Repeats     int
}

// measuredCapacity is what the probe measured: the median of its bursts' rates.
type measuredCapacity struct {
	RPS         float64   `json:"rps"`
	Bursts      []float64 `json:"bursts_rps"`
	Concurrency int       `json:"concurrency"`
	Requests    int       `json:"requests"`
	Seconds     float64   `json:"seconds"`
}

// Spread is the bursts' range (highest minus lowest) over their median.
func (m measuredCapacity) Spread() float64 {
	if len(m.Bursts) == 0 || m.RPS == 0 {
		return 0
	}
	lo, hi := slices.Min(m.Bursts), slices.Max(m.Bursts)
	return (hi - lo) / m.RPS
}

// probeCapacity runs p's bursts of rows against the cluster at endpoint and returns the
// median rate. Each burst draws its prompts from its own seed, and each pass over rows
// within a burst its own hash ids, so no burst reuses another's cached prefixes beyond
// what the slice itself shares.
func probeCapacity(ctx context.Context, endpoint string, rows []traces.Row, vocab int, seed uint64, p capacityProbe) (measuredCapacity, error) {
	if len(rows) == 0 {
		return measuredCapacity{}, errors.New("capacity: no requests to send")
	}
	m := measuredCapacity{Concurrency: p.Concurrency}
	start := time.Now()
	for i := range p.Repeats {
		src := &burstRows{rows: rows, duration: p.Duration, min: 3 * p.Concurrency}
		res, err := bench.Run(ctx, bench.Options{
			Endpoint: endpoint, Trace: src, Concurrency: p.Concurrency, VocabSize: vocab,
			Seed: seed + 0x5eed + uint64(i),
		})
		if err != nil {
			return m, fmt.Errorf("capacity burst %d: %w", i+1, err)
		}
		if n := res.Failures.Total(); n > 0 {
			return m, fmt.Errorf("capacity burst %d: %d of %d requests failed: %v", i+1, n, len(res.Records), res.Failures)
		}
		rps, err := saturatedRate(res.Records, p.Concurrency)
		if err != nil {
			return m, fmt.Errorf("capacity burst %d: %w", i+1, err)
		}
		m.Bursts = append(m.Bursts, rps)
		m.Requests += len(res.Records)
	}
	m.Seconds = time.Since(start).Seconds()
	m.RPS = median(m.Bursts)
	return m, nil
}

// saturatedRate is the rate at which a closed-loop burst with k requests in flight
// completed requests while it was saturated: from its k-th completion (the requests sent
// together at the start have mixed by then) to its last send (after which fewer than k
// are in flight). Each request counts the fraction of its life (send to last token) inside
// that window, so the estimate moves smoothly with the window instead of by whole
// requests: with k in flight the fractions sum to k requests per request-lifetime.
func saturatedRate(records []serving.Record, k int) (float64, error) {
	if len(records) < 2*k {
		return 0, fmt.Errorf("%d requests sent with %d in flight: too few to see the cluster saturated; send for longer", len(records), k)
	}
	finish := make([]float64, 0, len(records))
	var end float64
	for _, r := range records {
		finish = append(finish, r.Finish)
		end = max(end, r.Arrival)
	}
	slices.Sort(finish)
	from := finish[k-1]
	if end <= from {
		return 0, fmt.Errorf("the last request was sent %.3fs into the burst, before its %d-th completion (%.3fs): send for longer", end, k, from)
	}
	var done float64
	for _, r := range records {
		if life := r.Finish - r.Arrival; life > 0 {
			done += max(0, min(r.Finish, end)-max(r.Arrival, from)) / life
		}
	}
	return done / (end - from), nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// burstRows yields rows over and over until duration has passed since the first Next and
// at least min rows were sent (a cluster slower than the burst expects still shows its
// saturated rate, late); each pass shifts the hash ids past the previous pass's, so a pass
// shares only what the slice shares within itself.
type burstRows struct {
	rows     []traces.Row
	duration time.Duration
	min      int
	start    time.Time
	sent     int
	next     int
	shift    int64
}

func (b *burstRows) Next() (traces.Row, error) {
	if b.start.IsZero() {
		b.start = time.Now()
	} else if b.sent >= b.min && time.Since(b.start) >= b.duration {
		return traces.Row{}, io.EOF
	}
	b.sent++
	if b.next == len(b.rows) {
		b.next = 0
		var top int64
		for _, r := range b.rows {
			for _, h := range r.HashIDs {
				top = max(top, h)
			}
		}
		b.shift += top + 1
	}
	row := b.rows[b.next]
	b.next++
	row.Arrival = 0
	if row.HashIDs != nil && b.shift > 0 {
		ids := make([]int64, len(row.HashIDs))
		for i, h := range row.HashIDs {
			ids[i] = h + b.shift
		}
		row.HashIDs = ids
	}
	return row, nil
}

// capacityPerEngine is how many requests per engine a capacity burst keeps in flight:
// enough that the engines run at their peak rate, few enough that a request's life stays
// well under a two-second burst, whose saturated part then spans several lives. Measured
// with two tiny-model engines on this repo's slices (fresh clusters, load average 8-13 on
// 2 cores): Azure conversation 59-65 req/s with 16 in flight, 58-61 with 32, 42-63 with
// 64; Mooncake 29-39 with 16, 28-38 with 32, 27-47 with 64 (sending for 4 s).
const capacityPerEngine = 8

// measureCapacity starts the cluster of the first router, checks it runs engineCfg, and
// measures its capacity on the compared slice's requests (scaled and clipped as the
// compared runs send them): --capacity-repeats closed-loop bursts of --capacity-burst
// each, the median of their rates. The cluster is stopped after, so the compared runs
// start from cold caches as before.
func (f *fidelityFlags) measureCapacity(ctx context.Context, engineCfg serving.EngineConfig,
	slice func(float64) (traces.Reader, io.Closer, error), vocab int, log io.Writer) (*measuredCapacity, error) {
	src, closer, err := slice(1)
	if err != nil {
		return nil, err
	}
	var rows []traces.Row
	for {
		row, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			closer.Close()
			return nil, err
		}
		rows = append(rows, row)
	}
	closer.Close()
	c := f.cluster
	c.router.spec = f.routers[0]
	opts, err := c.options(io.Discard)
	if err != nil {
		return nil, err
	}
	probe := capacityProbe{Concurrency: capacityPerEngine * c.engines, Duration: f.capacityBurst, Repeats: f.capacityRepeats}
	fmt.Fprintf(log, "capacity: %d bursts of %s with %d requests in flight (the slice's, %s) ...\n",
		probe.Repeats, probe.Duration, probe.Concurrency, c.router.spec)
	cl, err := local.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	m, err := func() (measuredCapacity, error) {
		if err := checkEngines(ctx, cl.Endpoints, engineCfg); err != nil {
			return measuredCapacity{}, err
		}
		return probeCapacity(ctx, cl.URL, rows, vocab, c.router.seed, probe)
	}()
	if serr := cl.Stop(15 * time.Second); err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("measuring the cluster's capacity (--capacity-burst 0 takes the simulator's instead): %w", err)
	}
	fmt.Fprintf(log, "capacity: %.1f req/s measured (median of %s req/s, spread %.0f%%, %d requests in %.1fs)\n",
		m.RPS, formatRates(m.Bursts), 100*m.Spread(), m.Requests, m.Seconds)
	return &m, nil
}

func formatRates(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(s, ", ")
}

// rateScaleFor is the factor on the arrival rate of a slice of s.Rows requests arriving
// over s.Span seconds that offers load times capacityRPS.
func rateScaleFor(load, capacityRPS float64, s traces.Shape) float64 {
	return load * capacityRPS / offeredRPS(1, s)
}

// offeredRPS is the rate at which the slice's requests arrive, scaled by rateScale.
func offeredRPS(rateScale float64, s traces.Shape) float64 {
	return rateScale * float64(s.Rows) / math.Max(s.Span, 1e-9)
}

// offeredCapacity is the capacity --load is a fraction of: the real cluster's as measured,
// else (--capacity-burst 0) the simulator's.
func (rep *fidelityReport) offeredCapacity() float64 {
	if rep.Capacity != nil {
		return rep.Capacity.RPS
	}
	return rep.CapacityRPS
}

// measuredRPS prints a measured capacity with its spread, or "not measured".
func measuredRPS(m *measuredCapacity) string {
	if m == nil {
		return "not measured"
	}
	return fmt.Sprintf("%.1f req/s measured (±%.0f%% over %d bursts)", m.RPS, 50*m.Spread(), len(m.Bursts))
}
