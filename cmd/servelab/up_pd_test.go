package main

import (
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies/route"
)

// TestUpPrefillEngines: --prefill-engines P starts P prefill engines and the --engines
// ones as decode engines, each with its --role, behind a router whose endpoints carry the
// roles; it needs a P/D router configuration.
func TestUpPrefillEngines(t *testing.T) {
	model := synthTiny(t)
	const pd = "../../examples/router/llm-d-pd.yaml"
	for _, tc := range []struct {
		name            string
		engines, prefil int
		router          string
		wantRoles       []string
		wantErr         string
	}{
		{"one prefill, two decode", 2, 1, pd, []string{"prefill", "decode", "decode"}, ""},
		{"two prefill, one decode", 1, 2, pd, []string{"prefill", "prefill", "decode"}, ""},
		{"no prefill engines: today's cluster", 2, 0, "least-request", nil, ""},
		{"a P/D config without prefill engines routes with its decode profile", 2, 0, pd, nil, ""},
		{"prefill engines need a P/D config", 2, 1, "least-request", nil, "--prefill-engines 1: --router least-request is not a P/D EndpointPickerConfig"},
		{"negative", 2, -1, pd, nil, "--prefill-engines must be 0 or more"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := clusterFlags{engines: tc.engines, prefillEngines: tc.prefil, model: model, batch: "vllm", evict: "lru", blockSize: 16}
			f.router.spec = tc.router
			opts, err := f.options(io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.engines + tc.prefil; opts.Engines != want {
				t.Errorf("%d engines, want %d", opts.Engines, want)
			}
			if diff := cmp.Diff(tc.wantRoles, opts.Roles); diff != "" {
				t.Errorf("roles (-want +got):\n%s", diff)
			}
			var args []string
			if opts.EngineArgsFor != nil {
				for i := range opts.Engines {
					args = append(args, opts.EngineArgsFor(i)...)
				}
			}
			var wantArgs []string
			for _, r := range tc.wantRoles {
				wantArgs = append(wantArgs, "--role", r)
			}
			if diff := cmp.Diff(wantArgs, args); diff != "" {
				t.Errorf("per-engine flags (-want +got):\n%s", diff)
			}
			if _, isPD := opts.Router.Policy.(*route.PDProfileHandler); isPD != (tc.router == pd) {
				t.Errorf("router policy %T", opts.Router.Policy)
			}
		})
	}
}
