package traces

import (
	"errors"
	"io"
	"math"
)

// ScaleRate multiplies a trace's arrival rate by factor (positive): arrival times are
// divided by it.
func ScaleRate(r Reader, factor float64) Reader { return &scaled{r: r, factor: factor} }

type scaled struct {
	r      Reader
	factor float64
}

func (s *scaled) Next() (Row, error) {
	row, err := s.r.Next()
	row.Arrival /= s.factor
	return row, err
}

// Limit stops a trace after n rows.
func Limit(r Reader, n int) Reader { return &limited{r: r, left: n} }

type limited struct {
	r    Reader
	left int
}

func (l *limited) Next() (Row, error) {
	if l.left <= 0 {
		return Row{}, io.EOF
	}
	l.left--
	return l.r.Next()
}

// Skipped forwards the wrapped reader's count of skipped rows.
func (s *scaled) Skipped() int { return skipped(s.r) }

// Skipped forwards the wrapped reader's count of skipped rows.
func (l *limited) Skipped() int { return skipped(l.r) }

func skipped(r Reader) int {
	if s, ok := r.(Skipper); ok {
		return s.Skipped()
	}
	return 0
}

// ScaleTokens multiplies every request's input and output lengths by the same factor
// (positive): ScaleLengths(r, factor, factor).
func ScaleTokens(r Reader, factor float64) *LengthScaled { return ScaleLengths(r, factor, factor) }

// ScaleLengths multiplies every request's prompt length by input and its output length
// by output (both positive), and the tokens each prefix hash id covers by input, so a
// trace's block sharing survives the scaling: it is how a trace of 8B-model traffic is
// replayed against a small model with a short context. Prompts keep at least one token;
// outputs of two tokens or more keep at least two, so every request that had a time per
// output token (TPOT, vLLM's benchmark metric, needs two) keeps one. Hash ids that no
// longer start inside the scaled prompt are dropped.
func ScaleLengths(r Reader, input, output float64) *LengthScaled {
	return &LengthScaled{r: r, input: input, output: output}
}

// LengthScaled is the reader ScaleLengths returns.
type LengthScaled struct {
	r             Reader
	input, output float64
	raised        int
}

// Next returns the next row, scaled.
func (s *LengthScaled) Next() (Row, error) {
	row, err := s.r.Next()
	if err != nil {
		return row, err
	}
	in := func(n int) int { return max(1, int(math.Round(float64(n)*s.input))) }
	row.InputTokens = in(row.InputTokens)
	if out := int(math.Round(float64(row.OutputTokens) * s.output)); row.OutputTokens >= 2 && out < 2 {
		row.OutputTokens = 2
		s.raised++
	} else {
		row.OutputTokens = max(1, out)
	}
	if row.HashIDs != nil {
		row.HashBlockSize = in(row.HashBlockSize)
		row.HashIDs = coveredHashIDs(row.HashIDs, row.HashBlockSize, row.InputTokens)
	}
	return row, nil
}

// OutputsRaised counts the rows read so far whose scaled output fell below two tokens and
// was raised to two.
func (s *LengthScaled) OutputsRaised() int { return s.raised }

// FitContext shortens requests whose prompt plus output exceed maxModelLen, as a trace
// replayed against an engine with a shorter context must be: the output keeps up to half
// the context and the prompt gets the rest.
func FitContext(r Reader, maxModelLen int) *Fitted { return &Fitted{r: r, maxLen: maxModelLen} }

// Fitted is the reader FitContext returns; it counts what it clipped.
type Fitted struct {
	r      Reader
	maxLen int
	counts ClipCounts
}

// ClipCounts counts the rows FitContext shortened.
type ClipCounts struct {
	// Rows is every row read; Clipped those shortened, of which Prompts had their prompt
	// and Outputs their output shortened.
	Rows    int `json:"rows"`
	Clipped int `json:"clipped"`
	Prompts int `json:"prompts_clipped"`
	Outputs int `json:"outputs_clipped"`
	MaxLen  int `json:"max_model_len"`
}

// Next returns the next row, fitted to the context.
func (f *Fitted) Next() (Row, error) {
	row, err := f.r.Next()
	if err != nil {
		return row, err
	}
	f.counts.Rows++
	if row.InputTokens+row.OutputTokens <= f.maxLen {
		return row, nil
	}
	f.counts.Clipped++
	out := max(1, min(row.OutputTokens, f.maxLen/2))
	in := max(1, min(row.InputTokens, f.maxLen-out))
	if out < row.OutputTokens {
		f.counts.Outputs++
	}
	if in < row.InputTokens {
		f.counts.Prompts++
	}
	row.InputTokens, row.OutputTokens = in, out
	if row.HashIDs != nil {
		row.HashIDs = coveredHashIDs(row.HashIDs, row.HashBlockSize, row.InputTokens)
	}
	return row, nil
}

// Counts returns what was clipped of the rows read so far.
func (f *Fitted) Counts() ClipCounts {
	c := f.counts
	c.MaxLen = f.maxLen
	return c
}

// coveredHashIDs keeps the hash ids whose blocks start inside a prompt of n tokens.
func coveredHashIDs(ids []int64, blockSize, n int) []int64 {
	keep := min(len(ids), (n+blockSize-1)/blockSize)
	return ids[:keep:keep]
}

// Skipped forwards the wrapped reader's count of skipped rows.
func (s *LengthScaled) Skipped() int { return skipped(s.r) }

// Skipped forwards the wrapped reader's count of skipped rows.
func (f *Fitted) Skipped() int { return skipped(f.r) }

// Skip drops a trace's first n rows and shifts the rest to arrive from time 0, so a later
// slice of a trace replays like a trace of its own.
func Skip(r Reader, n int) Reader { return &skipping{r: r, left: n, origin: -1} }

type skipping struct {
	r      Reader
	left   int
	origin float64
}

func (s *skipping) Next() (Row, error) {
	for ; s.left > 0; s.left-- {
		if _, err := s.r.Next(); err != nil {
			return Row{}, err
		}
	}
	row, err := s.r.Next()
	if err != nil {
		return row, err
	}
	if s.origin < 0 {
		s.origin = row.Arrival
	}
	row.Arrival -= s.origin
	return row, nil
}

// Skipped forwards the wrapped reader's count of skipped rows.
func (s *skipping) Skipped() int { return skipped(s.r) }

// Window keeps the rows arriving in [start, end) seconds (end 0: no end), shifted so the
// window starts at time 0.
func Window(r Reader, start, end float64) Reader { return &windowed{r: r, start: start, end: end} }

type windowed struct {
	r          Reader
	start, end float64
}

func (w *windowed) Next() (Row, error) {
	for {
		row, err := w.r.Next()
		if err != nil {
			return row, err
		}
		if row.Arrival < w.start {
			continue
		}
		if w.end > 0 && row.Arrival >= w.end {
			return Row{}, io.EOF
		}
		row.Arrival -= w.start
		return row, nil
	}
}

// Skipped forwards the wrapped reader's count of skipped rows.
func (w *windowed) Skipped() int { return skipped(w.r) }

// Shape is what a caller needs to know of a workload before replaying it.
type Shape struct {
	Rows int
	// Span is the last arrival, in seconds.
	Span float64
	// MeanInput and MeanOutput are the mean prompt and output lengths in tokens.
	MeanInput, MeanOutput float64
	// HashBlockSize is the tokens per prefix hash id (0: the trace has none).
	HashBlockSize int
}

// ScanShape reads r to its end and returns its shape.
func ScanShape(r Reader) (Shape, error) {
	var s Shape
	var input, output float64
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Shape{}, err
		}
		s.Rows++
		s.Span = row.Arrival
		input += float64(row.InputTokens)
		output += float64(row.OutputTokens)
		if row.HashIDs != nil && s.HashBlockSize == 0 {
			s.HashBlockSize = row.HashBlockSize
		}
	}
	if s.Rows > 0 {
		s.MeanInput = input / float64(s.Rows)
		s.MeanOutput = output / float64(s.Rows)
	}
	return s, nil
}
