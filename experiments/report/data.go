package report

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"

	"github.com/parquet-go/parquet-go"

	"servelab/experiments"
)

// cellData is what the charts need of one cell.
type cellData struct {
	once    sync.Once
	samples []experiments.Sample
	// ttft and tpot are the latencies in ms of the requests that did not fail, ascending;
	// tpot leaves out single-token outputs, which have none (vLLM's benchmark does the same).
	ttft, tpot []float64
	err        error
}

func cellPath(dir, cellID, file string) string {
	return filepath.Join(dir, "cells", cellID, file)
}

// cell returns a cell's data, reading its files on first use.
func (e *Experiment) cell(id string) (*cellData, error) {
	e.mu.Lock()
	if e.cells == nil {
		e.cells = map[string]*cellData{}
	}
	c, ok := e.cells[id]
	if !ok {
		c = &cellData{}
		e.cells[id] = c
	}
	e.mu.Unlock()
	c.once.Do(func() {
		if c.samples, c.err = experiments.ReadTimeSeries(e.Dir, id); c.err != nil {
			return
		}
		c.ttft, c.tpot, c.err = readLatencies(cellPath(e.Dir, id, "records.parquet"))
		// Sorted here, cell by cell in parallel, so a policy's pooled latencies are a merge.
		slices.Sort(c.ttft)
		slices.Sort(c.tpot)
	})
	return c, c.err
}

// loadCells reads the cells' files in parallel.
func (e *Experiment) loadCells(ids []string) error {
	errs := make([]error, len(ids))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				_, errs[i] = e.cell(ids[i])
			}
		}()
	}
	for i := range ids {
		next <- i
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// readLatencies reads the ttft_ms, tpot_ms and failed columns of a records.parquet, page
// by page, leaving the other columns undecoded.
func readLatencies(path string) (ttft, tpot []float64, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	f, err := parquet.OpenFile(bytes.NewReader(raw), int64(len(raw)),
		parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	index := func(name string) (int, error) {
		leaf, ok := f.Schema().Lookup(name)
		if !ok {
			return 0, fmt.Errorf("%s: no column %q", path, name)
		}
		return leaf.ColumnIndex, nil
	}
	iTTFT, err1 := index("ttft_ms")
	iTPOT, err2 := index("tpot_ms")
	iFailed, err3 := index("failed")
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, nil, err
	}
	n := f.NumRows()
	ttft, tpot = make([]float64, 0, n), make([]float64, 0, n)
	var ttfts, tpots []float64
	var failed []bool
	for _, rg := range f.RowGroups() {
		chunks := rg.ColumnChunks()
		if ttfts, err = readDoubles(chunks[iTTFT], ttfts[:0]); err == nil {
			if tpots, err = readDoubles(chunks[iTPOT], tpots[:0]); err == nil {
				failed, err = readBools(chunks[iFailed], failed[:0])
			}
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(ttfts) != len(failed) || len(tpots) != len(failed) {
			return nil, nil, fmt.Errorf("%s: columns of a row group differ in length", path)
		}
		for i, bad := range failed {
			if bad {
				continue
			}
			ttft = append(ttft, ttfts[i])
			if tpots[i] > 0 {
				tpot = append(tpot, tpots[i])
			}
		}
	}
	return ttft, tpot, nil
}

// readColumn appends a column chunk's values to dst, through the page's typed reader when
// it has one and value by value otherwise.
func readColumn[T any](chunk parquet.ColumnChunk, dst []T, typed func(parquet.ValueReader, []T) (int, error, bool), conv func(parquet.Value) T) ([]T, error) {
	pages := chunk.Pages()
	defer pages.Close()
	var vals []parquet.Value
	for {
		page, err := pages.ReadPage()
		if errors.Is(err, io.EOF) {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
		want := int(page.NumValues())
		dst = slices.Grow(dst, want)
		r := page.Values()
		for got := 0; got < want; {
			buf := dst[len(dst) : len(dst)+want-got]
			n, err, ok := typed(r, buf)
			if !ok {
				if len(vals) < len(buf) {
					vals = make([]parquet.Value, len(buf))
				}
				n, err = r.ReadValues(vals[:len(buf)])
				for i := range n {
					buf[i] = conv(vals[i])
				}
			}
			dst, got = dst[:len(dst)+n], got+n
			if errors.Is(err, io.EOF) {
				break
			}
			if err == nil && n == 0 {
				err = io.ErrNoProgress
			}
			if err != nil {
				parquet.Release(page)
				return dst, err
			}
		}
		parquet.Release(page)
	}
}

func readDoubles(chunk parquet.ColumnChunk, dst []float64) ([]float64, error) {
	return readColumn(chunk, dst, func(r parquet.ValueReader, buf []float64) (int, error, bool) {
		if d, ok := r.(parquet.DoubleReader); ok {
			n, err := d.ReadDoubles(buf)
			return n, err, true
		}
		return 0, nil, false
	}, parquet.Value.Double)
}

func readBools(chunk parquet.ColumnChunk, dst []bool) ([]bool, error) {
	return readColumn(chunk, dst, func(r parquet.ValueReader, buf []bool) (int, error, bool) {
		if b, ok := r.(parquet.BooleanReader); ok {
			n, err := b.ReadBooleans(buf)
			return n, err, true
		}
		return 0, nil, false
	}, parquet.Value.Boolean)
}

// point is an (x, y) chart point.
type point [2]float64

// mergeSorted merges ascending slices into a new one.
func mergeSorted(lists [][]float64) []float64 {
	var out []float64
	for _, l := range lists {
		merged := make([]float64, 0, len(out)+len(l))
		i, j := 0, 0
		for i < len(out) && j < len(l) {
			if l[j] < out[i] {
				merged = append(merged, l[j])
				j++
			} else {
				merged = append(merged, out[i])
				i++
			}
		}
		merged = append(append(merged, out[i:]...), l[j:]...)
		out = merged
	}
	return out
}

// cdfPoints are the empirical CDF of xs (sorted in place if they are not) at about 300 quantiles: every
// 1/256th, and more finely in the top 1% where tail latency lives. Each point is a value
// and the fraction of xs at or below it, so x and y both increase and the last point is
// (max, 1).
func cdfPoints(xs []float64) []point {
	n := len(xs)
	if n == 0 {
		return nil
	}
	if !slices.IsSorted(xs) {
		slices.Sort(xs)
	}
	var probs []float64
	for k := range 257 {
		probs = append(probs, float64(k)/256)
	}
	for k := 1; k < 40; k++ {
		probs = append(probs, 0.99+float64(k)*0.01/40)
	}
	for k := 1; k < 20; k++ {
		probs = append(probs, 0.999+float64(k)*0.001/20)
	}
	slices.Sort(probs)
	var pts []point
	last := -1
	for _, p := range probs {
		i := min(max(int(math.Ceil(p*float64(n)))-1, 0), n-1)
		// The last of equal values, so y is the fraction at or below x.
		i = sort.SearchFloat64s(xs, math.Nextafter(xs[i], math.Inf(1))) - 1
		if i <= last {
			continue
		}
		pts = append(pts, point{xs[i], float64(i+1) / float64(n)})
		last = i
	}
	return pts
}

// meanOverSeeds averages one quantity of the seeds' time series index by index: the cells of
// one rate scale share the sample interval, so sample i is at the same time in every seed
// (the runner ends each series on the interval too). Near the end, where the seeds have
// finished at different times, the mean is over the seeds still running.
func meanOverSeeds(runs [][]experiments.Sample, f func(*experiments.Sample) float64) []point {
	longest := 0
	for _, r := range runs {
		longest = max(longest, len(r))
	}
	pts := make([]point, 0, longest)
	for i := range longest {
		var sum float64
		var t float64
		n := 0
		for _, r := range runs {
			if i < len(r) {
				if n == 0 {
					t = r[i].Time
				}
				sum += f(&r[i])
				n++
			}
		}
		pts = append(pts, point{t, sum / float64(n)})
	}
	return pts
}

// thin averages consecutive points in groups so that at most limit remain.
func thin(pts []point, limit int) []point {
	if len(pts) <= limit {
		return pts
	}
	group := (len(pts) + limit - 1) / limit
	out := make([]point, 0, limit)
	for i := 0; i < len(pts); i += group {
		end := min(i+group, len(pts))
		var p point
		for _, q := range pts[i:end] {
			p[0] += q[0]
			p[1] += q[1]
		}
		k := float64(end - i)
		out = append(out, point{p[0] / k, p[1] / k})
	}
	return out
}

// roundSig rounds x to sig significant digits: charts need no more, and the page is smaller.
func roundSig(x float64, sig int) float64 {
	if x == 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return x
	}
	e := int(math.Floor(math.Log10(math.Abs(x)))) - (sig - 1)
	if e >= 0 {
		q := math.Pow10(e)
		return math.Round(x/q) * q
	}
	q := math.Pow10(-e)
	return math.Round(x*q) / q
}
