package sim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/metrics"
	"servelab/policies/route"
)

// TestBuildRefusesTheKVEventsConfigsTheRouterRefuses: an EndpointPickerConfig the router
// cannot take its KV-event subscription from (two precise-prefix-cache-scorers with a
// kvEventsConfig each, agreeing or not, as --router or --ab-router; two arms' files that
// disagree) is refused by Build with the router's own error
// (route.EndpointPickerKVEventsFiles of --router and --ab-router, cmd/servelab's
// kvEventsZMQ), under the key that names the file; one kvEventsConfig per file builds.
func TestBuildRefusesTheKVEventsConfigsTheRouterRefuses(t *testing.T) {
	dir := t.TempDir()
	// epp writes an EndpointPickerConfig with one precise-prefix-cache-scorer per
	// kvEventsConfig in kvs (YAML, indented as a parameter), each in the default profile.
	epp := func(name string, kvs ...string) string {
		t.Helper()
		var plugins, refs strings.Builder
		for i, kv := range kvs {
			plugins.WriteString("- name: precise-" + string(rune('a'+i)) + "\n  type: precise-prefix-cache-scorer\n  parameters:\n    kvEventsConfig:\n" + kv)
			refs.WriteString("  - pluginRef: precise-" + string(rune('a'+i)) + "\n")
		}
		p := filepath.Join(dir, name)
		data := "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n" + plugins.String() +
			"schedulingProfiles:\n- name: default\n  plugins:\n" + refs.String()
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const kv, kvOther = "      topicFilter: kv@\n", "      topicFilter: kv@x\n"
	one := epp("one.yaml", kv)
	other := epp("other.yaml", kvOther)
	twoDisagreeing := epp("two-disagreeing.yaml", kv, kvOther)
	twoAgreeing := epp("two-agreeing.yaml", kv, kv)
	two := func(p string) string {
		return p + ": plugins[0].parameters.kvEventsConfig and plugins[1].parameters.kvEventsConfig: two kvEventsConfigs"
	}
	for _, tc := range []struct {
		name, router, ab string
		err              string // "" builds; else the key and the start of the router's error
	}{
		{name: "one kvEventsConfig", router: one},
		{name: "agreeing arms", router: one, ab: epp("one-more.yaml", kv+"      concurrency: 8\n")},
		{name: "two disagreeing in the router's file", router: twoDisagreeing, err: "router: " + two(twoDisagreeing)},
		{name: "two agreeing in the router's file", router: twoAgreeing, err: "router: " + two(twoAgreeing)},
		{name: "two in the router's file, arm b plain", router: twoDisagreeing, ab: "random", err: "router: " + two(twoDisagreeing)},
		{name: "two in arm b's file", router: one, ab: twoDisagreeing, err: "ab_router: " + two(twoDisagreeing)},
		{name: "two in arm b's file, arm a plain", router: "least-request", ab: twoAgreeing, err: "ab_router: " + two(twoAgreeing)},
		{name: "arms disagree", router: one, ab: other,
			err: "ab_router: " + one + `: plugins[0].parameters.kvEventsConfig.topicFilter "kv@" and ` + other + `: plugins[0].parameters.kvEventsConfig.topicFilter "kv@x" disagree`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := poolsSpec()
			c.Router, c.ABRouter = tc.router, tc.ab
			if tc.ab != "" {
				c.ABFraction = 0.5
			}
			_, err := c.Build(metrics.SLO{})
			_, routerErr := route.EndpointPickerKVEventsFiles(tc.router, tc.ab)
			if tc.err == "" {
				if err != nil || routerErr != nil {
					t.Fatalf("Build: %v; the router's check: %v; want both to accept", err, routerErr)
				}
				return
			}
			// A prefix, so "ab_router: F" does not pass for "router: F".
			if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Fatalf("Build: error %v, want one starting %q", err, tc.err)
			}
			// The same refusal as the router's, not a second check's.
			if routerErr == nil || !strings.HasSuffix(err.Error(), routerErr.Error()) {
				t.Errorf("Build: %v; the router's check: %v; want Build to end with the router's error", err, routerErr)
			}
		})
	}
}
