package traces

import (
	"errors"
	"fmt"
	"io"
	"slices"
)

// Stats summarises a trace.
type Stats struct {
	Rows int `json:"rows"`
	// Skipped counts rows the reader left out as failed requests (BurstGPT).
	Skipped     int          `json:"skipped,omitempty"`
	SpanSeconds float64      `json:"span_s"`
	Rate        float64      `json:"rate_per_s"` // rows over span
	Input       Distribution `json:"input_tokens"`
	Output      Distribution `json:"output_tokens"`
	// Blocks counts prefix hash ids; RepeatedBlocks those whose prefix (the id and every
	// id before it in its row) appeared in an earlier row: the blocks an unbounded prefix
	// cache would reuse.
	Blocks         int     `json:"hash_blocks,omitempty"`
	RepeatedBlocks int     `json:"repeated_hash_blocks,omitempty"`
	RepeatedShare  float64 `json:"repeated_hash_share,omitempty"`
	HashBlockSize  int     `json:"hash_block_size,omitempty"`
	Sessions       int     `json:"sessions,omitempty"`
}

// Distribution summarises token counts; percentiles interpolate between ranks as numpy's
// default does.
type Distribution struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  int     `json:"max"`
}

func distribution(v []int32) Distribution {
	if len(v) == 0 {
		return Distribution{}
	}
	slices.Sort(v)
	var sum float64
	for _, x := range v {
		sum += float64(x)
	}
	pct := func(p float64) float64 {
		rank := p / 100 * float64(len(v)-1)
		lo := int(rank)
		hi := min(lo+1, len(v)-1)
		return float64(v[lo]) + float64(v[hi]-v[lo])*(rank-float64(lo))
	}
	return Distribution{Mean: sum / float64(len(v)), P50: pct(50), P90: pct(90), P99: pct(99), Max: int(v[len(v)-1])}
}

// Inspect reads a whole trace and summarises it. It keeps two token counts per row (for
// the percentiles) and one word per distinct prefix block.
func Inspect(r Reader) (Stats, error) {
	var st Stats
	var in, out []int32
	var first, last float64
	seen := map[uint64]struct{}{}
	sessions := map[uint64]struct{}{}
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Stats{}, err
		}
		if st.Rows == 0 {
			first = row.Arrival
		}
		last = row.Arrival
		st.Rows++
		in = append(in, int32(row.InputTokens))
		out = append(out, int32(row.OutputTokens))
		var chain uint64
		for _, h := range row.HashIDs {
			chain = chainID(chain, h)
			st.Blocks++
			if _, dup := seen[chain]; dup {
				st.RepeatedBlocks++
			} else {
				seen[chain] = struct{}{}
			}
		}
		if row.HashBlockSize != 0 {
			st.HashBlockSize = row.HashBlockSize
		}
		if row.Session != 0 {
			sessions[row.Session] = struct{}{}
		}
	}
	if s, ok := r.(Skipper); ok {
		st.Skipped = s.Skipped()
	}
	st.SpanSeconds = last - first
	if st.SpanSeconds > 0 {
		st.Rate = float64(st.Rows) / st.SpanSeconds
	}
	st.Input, st.Output = distribution(in), distribution(out)
	if st.Blocks > 0 {
		st.RepeatedShare = float64(st.RepeatedBlocks) / float64(st.Blocks)
	}
	st.Sessions = len(sessions)
	return st, nil
}

// chainID identifies a block by its id and its prefix's, as an engine's chained block
// hashes do (64 bits: a collision among a trace's blocks is vanishingly unlikely).
func chainID(parent uint64, id int64) uint64 {
	x := parent*0x9e3779b97f4a7c15 ^ uint64(id)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// WriteText prints the statistics for people.
func (s Stats) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("rows           %d\n", s.Rows)
	if s.Skipped > 0 {
		ew.printf("skipped        %d failed requests (0 tokens)\n", s.Skipped)
	}
	ew.printf("span           %.1f s\nrate           %.2f req/s\n", s.SpanSeconds, s.Rate)
	for _, d := range []struct {
		name string
		d    Distribution
	}{{"input tokens ", s.Input}, {"output tokens", s.Output}} {
		ew.printf("%s  mean %.0f  p50 %.0f  p90 %.0f  p99 %.0f  max %d\n", d.name, d.d.Mean, d.d.P50, d.d.P90, d.d.P99, d.d.Max)
	}
	if s.Blocks > 0 {
		ew.printf("prefix blocks  %d of %d tokens, %.1f%% repeat an earlier block\n", s.Blocks, s.HashBlockSize, 100*s.RepeatedShare)
	}
	if s.Sessions > 0 {
		ew.printf("sessions       %d\n", s.Sessions)
	}
	return ew.err
}

// errWriter keeps the first write error so a report can print without checking each line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}
