package controller

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestCheckRouterKVEvents: the router args are read as the router reads them (both flag
// forms, the minimal set letting other flags pass), and only a flag given that says
// otherwise than the EndpointPickerConfig's kvEventsConfig is refused.
func TestCheckRouterKVEvents(t *testing.T) {
	withKV := withKVEvents(t, llmdDefault(3)) // socketPort 6557, topicFilter kv@
	field := "spec.router.endpointPickerConfig"
	tests := []struct {
		name string
		doc  string
		args []string
		want string // the policyError's message, "" for none
	}{
		{name: "no kvEventsConfig, flags given", doc: llmdDefault(3), args: []string{"--kv-events-socket-port=5557", "--kv-events-topic-filter", "x@"}},
		{name: "kvEventsConfig, no flags", doc: withKV, args: []string{"--seed=3", "--some-other-flag=1"}},
		{name: "flags agree", doc: withKV, args: []string{"--kv-events-socket-port", "6557", "--kv-events-topic-filter=kv@"}},
		{name: "port, space form", doc: withKV, args: []string{"--kv-events-socket-port", "5557"},
			want: "spec.router.template.args: --kv-events-socket-port 5557 and spec.router.endpointPickerConfig: plugins[1].parameters.kvEventsConfig.podDiscoveryConfig.socketPort 6557 disagree; give one"},
		{name: "topic, = form", doc: withKV, args: []string{"--kv-events-topic-filter=kv@pod"},
			want: `spec.router.template.args: --kv-events-topic-filter "kv@pod" and spec.router.endpointPickerConfig: plugins[1].parameters.kvEventsConfig.topicFilter "kv@" disagree; give one`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, perr := parseArgs(nil, minimalRouterFlags, tt.args, "spec.router.template.args")
			if perr != nil {
				t.Fatalf("parseArgs(%q): %v", tt.args, perr)
			}
			got := ""
			if perr := checkRouterKVEvents(fs, tt.doc, field); perr != nil {
				if perr.reason != ReasonInvalidPolicy {
					t.Errorf("reason %q, want %q", perr.reason, ReasonInvalidPolicy)
				}
				got = perr.msg
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("checkRouterKVEvents(%q) (-want +got):\n%s", tt.args, diff)
			}
		})
	}
}
