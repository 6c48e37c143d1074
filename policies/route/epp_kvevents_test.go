package route

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
)

// eppWithKVEvents is an EndpointPickerConfig whose precise-prefix-cache-scorer has the
// kvEventsConfig kv (YAML, indented as a parameter).
func eppWithKVEvents(kv string) string {
	return `apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: precise-prefix-cache-scorer
  parameters:
    kvEventsConfig:
` + kv + `
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
`
}

// TestEndpointPickerKVEvents: a precise-prefix-cache-scorer's kvEventsConfig is read with
// llm-d-kv-cache's names and defaults (kvevents.DefaultConfig: topicFilter kv@, socketPort
// 5557), and every bad field is an error naming it, from the policy loader too.
func TestEndpointPickerKVEvents(t *testing.T) {
	const field = "plugins[1].parameters.kvEventsConfig"
	for _, tc := range []struct {
		name, kv string
		want     *KVEventsConfig
		err      string
	}{
		{name: "llm-d guide", kv: "      topicFilter: \"kv@\"\n      discoverPods: true\n      podDiscoveryConfig:\n        socketPort: 5557",
			want: &KVEventsConfig{TopicFilter: "kv@", Concurrency: 4, DiscoverPods: true,
				PodDiscoveryConfig: &PodDiscoveryConfig{PodLabelSelector: "llm-d.ai/inference-serving=true", SocketPort: 5557}, Field: field}},
		{name: "defaults under what is given", kv: "      podDiscoveryConfig:\n        socketPort: 6000\n        podNamespace: ns",
			want: &KVEventsConfig{TopicFilter: "kv@", Concurrency: 4, DiscoverPods: true,
				PodDiscoveryConfig: &PodDiscoveryConfig{PodLabelSelector: "llm-d.ai/inference-serving=true", PodNamespace: "ns", SocketPort: 6000}, Field: field}},
		{name: "all topics", kv: "      topicFilter: \"\"\n      engineType: vllm\n      concurrency: 8",
			want: &KVEventsConfig{Concurrency: 8, EngineType: "vllm", DiscoverPods: true,
				PodDiscoveryConfig: &PodDiscoveryConfig{PodLabelSelector: "llm-d.ai/inference-serving=true", SocketPort: 5557}, Field: field}},
		{name: "unknown field", kv: "      topicFiltre: kv@", err: field + `: json: unknown field "topicFiltre"`},
		{name: "unknown pod field", kv: "      podDiscoveryConfig:\n        port: 5557", err: field + `: json: unknown field "port"`},
		{name: "bad port", kv: "      podDiscoveryConfig:\n        socketPort: 70000", err: field + ".podDiscoveryConfig.socketPort: 70000"},
		{name: "zero port", kv: "      podDiscoveryConfig:\n        socketPort: 0", err: field + ".podDiscoveryConfig.socketPort: 0"},
		{name: "centralized", kv: "      zmqEndpoint: tcp://*:5557", err: field + `.zmqEndpoint: "tcp://*:5557"`},
		{name: "no discovery", kv: "      discoverPods: false", err: field + ".discoverPods: false"},
		{name: "sglang", kv: "      engineType: sglang", err: field + `.engineType: "sglang"`},
		{name: "no workers", kv: "      concurrency: 0", err: field + ".concurrency: 0"},
		{name: "null pods", kv: "      podDiscoveryConfig: null", err: field + ".podDiscoveryConfig: null"},
		{name: "wrong type", kv: "      podDiscoveryConfig:\n        socketPort: \"5557\"", err: field + ": json: cannot unmarshal string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(eppWithKVEvents(tc.kv))
			got, err := EndpointPickerKVEvents(data)
			_, loadErr := LoadEndpointPickerConfig(data, policies.Env{BlockSize: 16})
			if tc.err != "" {
				for _, e := range []error{err, loadErr} {
					if e == nil || !strings.Contains(e.Error(), tc.err) {
						t.Errorf("error %v, want one containing %q", e, tc.err)
					}
				}
				return
			}
			if err != nil || loadErr != nil {
				t.Fatalf("EndpointPickerKVEvents: %v; LoadEndpointPickerConfig: %v", err, loadErr)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// TestEndpointPickerKVEventsFile: a file's configuration names the file; a config without
// a kvEventsConfig, a compact spec and a YAML policy spec have none.
func TestEndpointPickerKVEventsFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	with := write("with.yaml", eppWithKVEvents("      topicFilter: kv@"))
	c, err := EndpointPickerKVEventsFile(with)
	if err != nil || c == nil || c.Field != with+": plugins[1].parameters.kvEventsConfig" {
		t.Fatalf("%s: %+v, %v", with, c, err)
	}
	bad := write("bad.yaml", eppWithKVEvents("      socketPort: 5557"))
	if _, err := EndpointPickerKVEventsFile(bad); err == nil || !strings.Contains(err.Error(), bad+": plugins[1].parameters.kvEventsConfig: json: unknown field \"socketPort\"") {
		t.Errorf("%s: %v", bad, err)
	}
	without := write("without.yaml", strings.Replace(eppWithKVEvents("      topicFilter: kv@"), "    kvEventsConfig:\n      topicFilter: kv@\n", "    tokenProcessorConfig:\n      blockSize: 16\n", 1))
	spec := write("spec.yaml", "name: weighted\nparams:\n  prefix: 1\n")
	for _, s := range []string{without, spec, "weighted:precise-prefix=1"} {
		if c, err := EndpointPickerKVEventsFile(s); c != nil || err != nil {
			t.Errorf("%s: %+v, %v; want none", s, c, err)
		}
	}
}
