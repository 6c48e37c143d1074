package metrics

import (
	"cmp"
	"slices"
)

// Failure is one kind of request failure: how many requests failed that way and the
// error message of the first.
type Failure struct {
	Count      int    `json:"count"`
	FirstError string `json:"first_error"`
}

// Failures counts a run's failed requests by kind ("HTTP 400", "connection refused",
// "context exceeds max_model_len", ...), keeping each kind's first message: what a person
// needs to see why requests failed. The zero value is not usable; make one with make.
type Failures map[string]Failure

// Add counts one failed request of the kind; msg is kept if it is the kind's first.
func (f Failures) Add(kind, msg string) {
	c := f[kind]
	if c.Count == 0 {
		c.FirstError = msg
	}
	c.Count++
	f[kind] = c
}

// Total is the number of failed requests.
func (f Failures) Total() int {
	n := 0
	for _, c := range f {
		n += c.Count
	}
	return n
}

// Kinds lists the kinds, the most frequent first (ties by name).
func (f Failures) Kinds() []string {
	kinds := make([]string, 0, len(f))
	for k := range f {
		kinds = append(kinds, k)
	}
	slices.SortFunc(kinds, func(a, b string) int {
		if c := cmp.Compare(f[b].Count, f[a].Count); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	return kinds
}
