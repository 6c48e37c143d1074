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

// ScaleTokens multiplies every request's input and output lengths by factor (positive),
// keeping at least one token of each, and the tokens each prefix hash id covers by the same
// factor, so a trace's block sharing survives the scaling: it is how a trace of 8B-model
// traffic is replayed against a small model with a short context. Hash ids that no longer
// start inside the scaled prompt are dropped.
func ScaleTokens(r Reader, factor float64) Reader { return &tokenScaled{r: r, factor: factor} }

type tokenScaled struct {
	r      Reader
	factor float64
}

func (s *tokenScaled) Next() (Row, error) {
	row, err := s.r.Next()
	if err != nil {
		return row, err
	}
	scale := func(n int) int { return max(1, int(math.Round(float64(n)*s.factor))) }
	row.InputTokens = scale(row.InputTokens)
	row.OutputTokens = scale(row.OutputTokens)
	if row.HashIDs != nil {
		row.HashBlockSize = scale(row.HashBlockSize)
		row.HashIDs = coveredHashIDs(row.HashIDs, row.HashBlockSize, row.InputTokens)
	}
	return row, nil
}

// FitContext shortens requests whose prompt plus output exceed maxModelLen, as a trace
// replayed against an engine with a shorter context must be: the output keeps up to half
// the context and the prompt gets the rest.
func FitContext(r Reader, maxModelLen int) Reader { return &fitted{r: r, maxLen: maxModelLen} }

type fitted struct {
	r      Reader
	maxLen int
}

func (f *fitted) Next() (Row, error) {
	row, err := f.r.Next()
	if err != nil || row.InputTokens+row.OutputTokens <= f.maxLen {
		return row, err
	}
	row.OutputTokens = max(1, min(row.OutputTokens, f.maxLen/2))
	row.InputTokens = max(1, min(row.InputTokens, f.maxLen-row.OutputTokens))
	if row.HashIDs != nil {
		row.HashIDs = coveredHashIDs(row.HashIDs, row.HashBlockSize, row.InputTokens)
	}
	return row, nil
}

// coveredHashIDs keeps the hash ids whose blocks start inside a prompt of n tokens.
func coveredHashIDs(ids []int64, blockSize, n int) []int64 {
	keep := min(len(ids), (n+blockSize-1)/blockSize)
	return ids[:keep:keep]
}

// Skipped forwards the wrapped reader's count of skipped rows.
func (s *tokenScaled) Skipped() int { return skipped(s.r) }

// Skipped forwards the wrapped reader's count of skipped rows.
func (f *fitted) Skipped() int { return skipped(f.r) }

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
	// MeanInput is the mean prompt length in tokens.
	MeanInput float64
	// HashBlockSize is the tokens per prefix hash id (0: the trace has none).
	HashBlockSize int
}

// ScanShape reads r to its end and returns its shape.
func ScanShape(r Reader) (Shape, error) {
	var s Shape
	var input float64
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
		if row.HashIDs != nil && s.HashBlockSize == 0 {
			s.HashBlockSize = row.HashBlockSize
		}
	}
	if s.Rows > 0 {
		s.MeanInput = input / float64(s.Rows)
	}
	return s, nil
}
