package sim

import (
	"fmt"
	"strings"
	"testing"

	"servelab/policies"
	"servelab/policies/route"
)

// TestPDProfile: the P/D decision a real router runs for a cluster spec is the one the
// simulator's disaggregation builds from the same keys: the router as the decode profile,
// prefill_router (default: the router's spec) as the prefill profile, llm-d's decider with
// non_cached_tokens (default 16), and llm-d's role filters; a P/D EndpointPickerConfig
// brings its own.
func TestPDProfile(t *testing.T) {
	n := 48
	env := policies.Env{Seed: 3, BlockSize: 16}
	for _, tc := range []struct {
		name            string
		spec            ClusterSpec
		decode, prefill string // the policies' types
		nonCached       int
		wantErr         string
	}{
		{"defaults", ClusterSpec{Router: "least-request"}, "*route.LeastRequest", "*route.LeastRequest", route.DefaultNonCachedTokens, ""},
		{"prefill router and threshold", ClusterSpec{Router: "least-request", PrefillRouter: "round-robin", NonCachedTokens: &n},
			"*route.LeastRequest", "*route.RoundRobin", 48, ""},
		{"EndpointPickerConfig", ClusterSpec{Router: "../examples/router/llm-d-pd.yaml"}, "", "", 16, ""},
		{"EndpointPickerConfig with a threshold", ClusterSpec{Router: "../examples/router/llm-d-pd.yaml", NonCachedTokens: &n}, "", "", 0, "non_cached_tokens: set with router"},
		{"bad prefill router", ClusterSpec{Router: "least-request", PrefillRouter: "nope"}, "", "", 0, "prefill_router:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pd, err := tc.spec.PDProfile(env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if pd.Decider.NonCachedTokens != tc.nonCached || pd.BlockSize != 16 || pd.DecodeFilter == nil || pd.PrefillFilter == nil {
				t.Errorf("handler %+v", pd)
			}
			if tc.decode != "" {
				if got := fmt.Sprintf("%T", pd.Decode); got != tc.decode {
					t.Errorf("decode profile %s, want %s", got, tc.decode)
				}
				if got := fmt.Sprintf("%T", pd.Prefill); got != tc.prefill {
					t.Errorf("prefill profile %s, want %s", got, tc.prefill)
				}
				if pd.Decode == pd.Prefill {
					t.Error("the two profiles share one policy object")
				}
			}
			if !pd.PrefillFilter.Allows(route.RolePrefill) || pd.PrefillFilter.Allows(route.RoleDecode) || !pd.DecodeFilter.Allows(route.RoleDecode) {
				t.Error("role filters are not llm-d's decode-filter and prefill-filter")
			}
		})
	}
}
