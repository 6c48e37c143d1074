package route

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
)

// pdSummary is what a P/D configuration built: each profile's scorers and picker, its
// role filter, the decider's threshold.
type pdSummary struct {
	Decode, Prefill             string
	DecodeFilter, PrefillFilter *RoleFilter
	NonCachedTokens             int
	BlockSize                   int
}

func summarisePD(t *testing.T, p Policy) pdSummary {
	t.Helper()
	h, ok := p.(*PDProfileHandler)
	if !ok {
		t.Fatalf("got a %T, want a *PDProfileHandler", p)
	}
	return pdSummary{
		Decode: h.Decode.(*Weighted).String(), Prefill: h.Prefill.(*Weighted).String(),
		DecodeFilter: h.DecodeFilter, PrefillFilter: h.PrefillFilter,
		NonCachedTokens: h.Decider.NonCachedTokens, BlockSize: h.BlockSize,
	}
}

// TestEPPConfigPD: llm-d's shipped P/D configurations (its current disagg-profile-handler
// form, the pd-profile-handler form before it, the simulator's) load as written, and the
// handler's parameters (profile and decider names, by-label filters) are honoured.
func TestEPPConfigPD(t *testing.T) {
	const llmdProfile = "weighted[2*prefix-cache-scorer + 1*queue-scorer; max-score-picker]"
	shipped := pdSummary{Decode: llmdProfile, Prefill: llmdProfile, DecodeFilter: DecodeRoleFilter(), PrefillFilter: PrefillRoleFilter(),
		NonCachedTokens: 16, BlockSize: 16}
	const head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
	tests := []struct {
		name, file, text string
		want             pdSummary
	}{
		{name: "llm-d pd-epp-config.yaml", file: "testdata/llm-d-pd.yaml", want: shipped},
		{name: "llm-d sim-pd-epp-config.yaml", file: "testdata/llm-d-sim-pd.yaml", want: shipped},
		{name: "llm-d pd-profile-handler form", file: "testdata/llm-d-pd-profile-handler.yaml", want: shipped},
		{name: "servelab's example", file: "../../examples/router/llm-d-pd.yaml", want: shipped},
		{name: "named profiles, decider and by-label filters", text: head + `plugins:
- {type: queue-scorer}
- {type: kv-cache-utilization-scorer, name: kv}
- {type: prefix-based-pd-decider, name: dec, parameters: {nonCachedTokens: 64}}
- {type: by-label, name: only-prefill, parameters: {label: llm-d.ai/role, validValues: [prefill]}}
- {type: by-label, name: decoders, parameters: {label: llm-d.ai/role, validValues: [decode, both], allowsNoLabel: true}}
- type: pd-profile-handler
  parameters: {decodeProfile: d, prefillProfile: p, deciderPluginName: dec, primaryPort: 8000, prefixPluginType: prefix-cache-scorer}
schedulingProfiles:
- {name: p, plugins: [{pluginRef: only-prefill}, {pluginRef: queue-scorer, weight: 3}]}
- {name: d, plugins: [{pluginRef: decoders}, {pluginRef: kv, weight: 2}]}
`, want: pdSummary{Decode: "weighted[2*kv; max-score-picker]", Prefill: "weighted[3*queue-scorer; max-score-picker]",
			DecodeFilter:    &RoleFilter{Name: "decoders", Values: []string{"decode", "both"}, AllowsNoLabel: true},
			PrefillFilter:   &RoleFilter{Name: "only-prefill", Values: []string{"prefill"}},
			NonCachedTokens: 64, BlockSize: 16}},
		{name: "disagg-profile-handler nested names, always-disagg decider, no filters", text: "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n" + `plugins:
- {type: queue-scorer}
- {type: always-disagg-pd-decider, name: always}
- {type: disagg-profile-handler, parameters: {profiles: {decode: dd, prefill: pp}, deciders: {prefill: always}}}
- {type: disagg-headers-handler}
schedulingProfiles:
- {name: dd, plugins: [{pluginRef: queue-scorer}]}
- {name: pp, plugins: [{pluginRef: queue-scorer, weight: 5}]}
`, want: pdSummary{Decode: "weighted[1*queue-scorer; max-score-picker]", Prefill: "weighted[5*queue-scorer; max-score-picker]", NonCachedTokens: 0, BlockSize: 16}},
		{name: "disagg-profile-handler flat legacy names", text: head + `plugins:
- {type: queue-scorer}
- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 32}}
- {type: disagg-profile-handler, parameters: {deciderPluginName: prefix-based-pd-decider}}
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: queue-scorer}]}
- {name: decode, plugins: [{pluginRef: queue-scorer}]}
`, want: pdSummary{Decode: "weighted[1*queue-scorer; max-score-picker]", Prefill: "weighted[1*queue-scorer; max-score-picker]", NonCachedTokens: 32, BlockSize: 16}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p Policy
			if tc.file != "" {
				p = mustParse(t, tc.file, testEnv)
			} else {
				var err error
				if p, err = LoadEndpointPickerConfig([]byte(tc.text), testEnv); err != nil {
					t.Fatal(err)
				}
			}
			if diff := cmp.Diff(tc.want, summarisePD(t, p)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestEPPConfigPDErrorsNameTheField(t *testing.T) {
	const head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
	const plugins = `plugins:
- {type: queue-scorer}
- {type: prefill-filter}
- {type: decode-filter}
- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 16}}
`
	const profiles = `schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}]}
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer}]}
`
	const handler = "- {type: pd-profile-handler}\n"
	tests := []struct{ name, text, field string }{
		{"filter without a handler", head + plugins + "schedulingProfiles:\n- {name: d, plugins: [{pluginRef: queue-scorer}]}\n", "plugins[1].type"},
		{"decider threshold missing", head + "plugins:\n- {type: prefix-based-pd-decider}\n" + handler + profiles, "plugins[0].parameters.nonCachedTokens"},
		{"decider threshold zero", head + "plugins:\n- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 0}}\n" + handler, "plugins[0].parameters.nonCachedTokens"},
		{"decider threshold negative", head + "plugins:\n- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: -3}}\n" + handler, "plugins[0].parameters.nonCachedTokens"},
		{"decider unknown parameter", head + "plugins:\n- {type: prefix-based-pd-decider, parameters: {nonCached: 16}}\n" + handler, "plugins[0].parameters"},
		{"no decode profile", head + plugins + handler + "schedulingProfiles:\n- {name: prefill, plugins: [{pluginRef: queue-scorer}]}\n", `no profile named "decode"`},
		{"no prefill profile", head + plugins + handler + "schedulingProfiles:\n- {name: decode, plugins: [{pluginRef: queue-scorer}]}\n", `no profile named "prefill"`},
		{"third profile", head + plugins + handler + profiles + "- {name: extra, plugins: [{pluginRef: queue-scorer}]}\n", "schedulingProfiles[2].name"},
		{"profile twice", head + plugins + handler + profiles + "- {name: decode, plugins: [{pluginRef: queue-scorer}]}\n", "schedulingProfiles[2].name"},
		{"decider not a plugin", head + plugins + "- {type: pd-profile-handler, parameters: {deciderPluginName: nope}}\n" + profiles, "plugins[4].parameters.deciderPluginName"},
		{"decider not a decider", head + plugins + "- {type: pd-profile-handler, parameters: {deciderPluginName: queue-scorer}}\n" + profiles, "plugins[4].parameters.deciderPluginName"},
		{"handler unknown parameter", head + plugins + "- {type: pd-profile-handler, parameters: {decoderProfile: d}}\n" + profiles, "plugins[4].parameters"},
		{"handler bad port", head + plugins + "- {type: pd-profile-handler, parameters: {primaryPort: 70000}}\n" + profiles, "plugins[4].parameters.primaryPort"},
		{"pd handler with nested names", head + plugins + "- {type: pd-profile-handler, parameters: {profiles: {decode: decode}}}\n" + profiles, "plugins[4].parameters.profiles"},
		{"disagg handler without decider", head + plugins + "- {type: disagg-profile-handler}\n" + profiles, "plugins[4].parameters.deciders.prefill"},
		{"disagg handler mixed forms", head + plugins + "- {type: disagg-profile-handler, parameters: {deciders: {prefill: prefix-based-pd-decider}, decodeProfile: decode}}\n" + profiles, "plugins[4].parameters"},
		{"disagg handler encode stage", head + plugins + "- {type: disagg-profile-handler, parameters: {deciders: {prefill: prefix-based-pd-decider, encode: x}}}\n" + profiles, "plugins[4].parameters"},
		{"same profile twice", head + plugins + "- {type: pd-profile-handler, parameters: {decodeProfile: prefill}}\n" + profiles, "plugins[4].parameters"},
		{"two handlers", head + plugins + handler + "- {type: disagg-profile-handler, parameters: {deciders: {prefill: prefix-based-pd-decider}}}\n" + profiles, "plugins[5].type"},
		{"two filters in a profile", head + plugins + handler +
			"schedulingProfiles:\n- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: decode-filter}]}\n- {name: decode, plugins: [{pluginRef: queue-scorer}]}\n",
			"schedulingProfiles[0].plugins[1].pluginRef"},
		{"decider in a profile", head + plugins + handler +
			"schedulingProfiles:\n- {name: prefill, plugins: [{pluginRef: queue-scorer}]}\n- {name: decode, plugins: [{pluginRef: prefix-based-pd-decider}]}\n",
			"schedulingProfiles[1].plugins[0].pluginRef"},
		{"by-label on another label", head + "plugins:\n- {type: by-label, parameters: {label: app, validValues: [x]}}\n", "plugins[0].parameters.label"},
		{"by-label unknown role", head + "plugins:\n- {type: by-label, parameters: {label: llm-d.ai/role, validValues: [prefiller]}}\n", "plugins[0].parameters.validValues[0]"},
		{"by-label passes nothing", head + "plugins:\n- {type: by-label, parameters: {label: llm-d.ai/role}}\n", "plugins[0].parameters.validValues"},
		{"filter takes no parameters", head + "plugins:\n- {type: decode-filter, parameters: {x: 1}}\n", "plugins[0].parameters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadEndpointPickerConfig([]byte(tc.text), testEnv)
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %v, want one naming %q", err, tc.field)
			}
		})
	}
}

// TestPDConfigDecides: the handler a P/D file builds disaggregates a long uncached prompt
// and keeps a short one, or one the decode endpoint caches, on the decode endpoint.
func TestPDConfigDecides(t *testing.T) {
	h := mustParse(t, "testdata/llm-d-pd.yaml", testEnv).(*PDProfileHandler)
	views := func(n int, cache serving.PrefixCache) []serving.InstanceView {
		v := make([]serving.InstanceView, n)
		for i := range v {
			v[i] = serving.InstanceView{Index: i, Cache: cache}
		}
		return v
	}
	req := func(tokens int) *serving.Request {
		return &serving.Request{PromptTokens: tokens, BlockHashes: make([]uint64, tokens/16)}
	}
	for _, tc := range []struct {
		name        string
		tokens      int
		cache       serving.PrefixCache
		wantPrefill bool
	}{
		{"short prompt stays on decode", 15, nil, false},
		{"long uncached prompt disaggregates", 400, nil, true},
		{"prompt cached on the decode endpoint stays", 400, fakeCache(25), false},
		{"partly cached, uncached rest over the threshold", 400, fakeCache(10), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, p := h.Pick(req(tc.tokens), views(2, tc.cache), views(1, nil))
			if d < 0 || d > 1 {
				t.Fatalf("decode %d", d)
			}
			if got := p >= 0; got != tc.wantPrefill {
				t.Errorf("prefill %d; want disaggregated %t", p, tc.wantPrefill)
			}
		})
	}
}

func TestRoleFilters(t *testing.T) {
	got := map[string][2]bool{}
	for _, role := range append([]string{""}, Roles...) {
		got[role] = [2]bool{DecodeRoleFilter().Allows(role), PrefillRoleFilter().Allows(role)}
	}
	// llm-d's decode-filter allows unlabelled endpoints; its prefill-filter does not.
	want := map[string][2]bool{"": {true, false}, "prefill": {false, true}, "decode": {true, false}, "both": {true, true}, "prefill-decode": {true, true}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got) [decode, prefill]:\n%s", diff)
	}
	if !(*RoleFilter)(nil).Allows("prefill") {
		t.Error("a nil filter refuses an endpoint")
	}
}
