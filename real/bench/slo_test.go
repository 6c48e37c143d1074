package bench

import (
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/traces"
)

// TestSLOHeadersFromTrace: a row's own objectives go out as llm-d's headers; a row without
// them sends none, leaving the router's default.
func TestSLOHeadersFromTrace(t *testing.T) {
	for _, tc := range []struct {
		row  traces.Row
		want http.Header
	}{
		{traces.Row{TTFTSLOMs: 500, TPOTSLOMs: 25.5}, http.Header{"X-Slo-Ttft-Ms": {"500"}, "X-Slo-Tpot-Ms": {"25.5"}}},
		{traces.Row{TPOTSLOMs: 40}, http.Header{"X-Slo-Tpot-Ms": {"40"}}},
		{traces.Row{}, http.Header{}},
	} {
		h := http.Header{}
		setSLOHeaders(h, tc.row)
		if diff := cmp.Diff(tc.want, h); diff != "" {
			t.Errorf("%+v (-want +got):\n%s", tc.row, diff)
		}
	}
}
