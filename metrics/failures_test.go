package metrics

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFailuresKeepTheFirstMessageOfEachKind(t *testing.T) {
	f := Failures{}
	for _, e := range []struct{ kind, msg string }{
		{"HTTP 429", "busy 1"}, {"HTTP 400", "too long 1"}, {"HTTP 400", "too long 2"},
		{"timeout", "t"}, {"HTTP 400", "too long 3"}, {"HTTP 429", "busy 2"},
	} {
		f.Add(e.kind, e.msg)
	}
	want := Failures{
		"HTTP 400": {Count: 3, FirstError: "too long 1"},
		"HTTP 429": {Count: 2, FirstError: "busy 1"},
		"timeout":  {Count: 1, FirstError: "t"},
	}
	if diff := cmp.Diff(want, f); diff != "" {
		t.Errorf("failures (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"HTTP 400", "HTTP 429", "timeout"}, f.Kinds()); diff != "" {
		t.Errorf("kinds, most frequent first (-want +got):\n%s", diff)
	}
	if f.Total() != 6 {
		t.Errorf("total %d, want 6", f.Total())
	}
}
