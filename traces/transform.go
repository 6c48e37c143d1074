package traces

import "io"

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
