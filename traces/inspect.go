package traces

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
)

// Stats summarises a trace.
type Stats struct {
	Rows        int          `json:"rows"`
	SpanSeconds float64      `json:"span_s"`
	Rate        float64      `json:"rate_per_s"`
	Input       Distribution `json:"input_tokens"`
	Output      Distribution `json:"output_tokens"`
	// Blocks counts prefix hash ids; Repeated those equal to an earlier one at the same
	// position of the chain (blocks a prefix cache could reuse).
	Blocks         int     `json:"hash_blocks,omitempty"`
	RepeatedBlocks int     `json:"repeated_hash_blocks,omitempty"`
	RepeatedShare  float64 `json:"repeated_hash_share,omitempty"`
	Sessions       int     `json:"sessions,omitempty"`
}

// Distribution summarises token counts.
type Distribution struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  int     `json:"max"`
}

func distribution(v []int) Distribution {
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
		lo := int(math.Floor(rank))
		hi := min(lo+1, len(v)-1)
		return float64(v[lo]) + float64(v[hi]-v[lo])*(rank-float64(lo))
	}
	return Distribution{Mean: sum / float64(len(v)), P50: pct(50), P90: pct(90), P99: pct(99), Max: v[len(v)-1]}
}

// Inspect reads a whole trace and summarises it.
func Inspect(r Reader) (Stats, error) {
	var st Stats
	var in, out []int
	var first, last float64
	seen := map[[2]int64]struct{}{}
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
		in = append(in, row.InputTokens)
		out = append(out, row.OutputTokens)
		for i, h := range row.HashIDs {
			st.Blocks++
			// Trace ids are already prefix-unique (Mooncake remaps them); pairing with the
			// position guards native traces whose ids repeat at other positions.
			key := [2]int64{h, int64(i)}
			if _, dup := seen[key]; dup {
				st.RepeatedBlocks++
			} else {
				seen[key] = struct{}{}
			}
		}
		if row.Session != 0 {
			sessions[row.Session] = struct{}{}
		}
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

// WriteText prints the statistics for people.
func (s Stats) WriteText(w io.Writer) error {
	_, err := fmt.Fprintf(w, "rows           %d\nspan           %.1f s\nrate           %.2f req/s\n", s.Rows, s.SpanSeconds, s.Rate)
	if err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		d    Distribution
	}{{"input tokens ", s.Input}, {"output tokens", s.Output}} {
		fmt.Fprintf(w, "%s  mean %.0f  p50 %.0f  p90 %.0f  p99 %.0f  max %d\n", d.name, d.d.Mean, d.d.P50, d.d.P90, d.d.P99, d.d.Max)
	}
	if s.Blocks > 0 {
		fmt.Fprintf(w, "prefix blocks  %d, %.1f%% repeat an earlier block\n", s.Blocks, 100*s.RepeatedShare)
	}
	if s.Sessions > 0 {
		fmt.Fprintf(w, "sessions       %d\n", s.Sessions)
	}
	return nil
}
