package bench

import (
	"net/http"
	"strconv"

	"servelab/policies/route"
	"servelab/traces"
)

// setSLOHeaders sends a row's own latency objectives (a native trace's slo_ttft_ms and
// slo_tpot_ms) as llm-d's x-slo-ttft-ms and x-slo-tpot-ms headers, which an SLO-aware
// router (servelab router's predicted-latency-scorer, llm-d's EPP) routes by.
func setSLOHeaders(h http.Header, row traces.Row) {
	if row.TTFTSLOMs > 0 {
		h.Set(route.TTFTSLOHeader, strconv.FormatFloat(row.TTFTSLOMs, 'f', -1, 64))
	}
	if row.TPOTSLOMs > 0 {
		h.Set(route.TPOTSLOHeader, strconv.FormatFloat(row.TPOTSLOMs, 'f', -1, 64))
	}
}
