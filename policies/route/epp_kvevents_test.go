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

// TestEndpointPickerKVEventsFiles: an A/B test's arms give the configurations their files
// have, arm a's first; two must agree on the socket port and topic filter (the fields the
// router subscribes with), and a disagreement or a bad field names the files.
func TestEndpointPickerKVEventsFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, kv string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(eppWithKVEvents(kv)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("a.yaml", "      topicFilter: kv@\n      podDiscoveryConfig:\n        socketPort: 6557")
	b := write("b.yaml", "      topicFilter: kv@\n      concurrency: 16\n      engineType: vllm\n      podDiscoveryConfig:\n        socketPort: 6557\n        podLabelSelector: app=vllm")
	port := write("port.yaml", "      topicFilter: kv@\n      podDiscoveryConfig:\n        socketPort: 5557")
	topic := write("topic.yaml", "      topicFilter: kv@x\n      podDiscoveryConfig:\n        socketPort: 6557")
	bad := write("bad.yaml", "      topicFiltre: kv@")
	// A second precise-prefix-cache-scorer with a kvEventsConfig of its own, after the
	// first: the router subscribes once per endpoint, so one file may have one, agreeing
	// with the first or not.
	second := func(name, kv string) string {
		t.Helper()
		p := write(name, eppWithKVEvents("      topicFilter: kv@"))
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		doc := strings.Replace(string(data), "schedulingProfiles:",
			"- name: precise-2\n  type: precise-prefix-cache-scorer\n  parameters:\n    kvEventsConfig:\n"+kv+"\nschedulingProfiles:", 1)
		if err := os.WriteFile(p, []byte(doc+"  - pluginRef: precise-2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	twoAgreeing := second("two-agreeing.yaml", "      topicFilter: kv@")
	twoDisagreeing := second("two-disagreeing.yaml", "      topicFilter: kv@x")
	const two = ": plugins[1].parameters.kvEventsConfig and plugins[2].parameters.kvEventsConfig: two kvEventsConfigs"
	const field = ": plugins[1].parameters.kvEventsConfig"
	for _, tc := range []struct {
		name  string
		specs []string
		want  []string // the configurations' Fields
		err   string
	}{
		{name: "arm b alone", specs: []string{"least-request", b}, want: []string{b + field}},
		{name: "arm a alone", specs: []string{a, "random"}, want: []string{a + field}},
		{name: "no A/B test", specs: []string{a, ""}, want: []string{a + field}},
		{name: "neither", specs: []string{"least-request", "random"}},
		{name: "agreeing", specs: []string{a, b}, want: []string{a + field, b + field}},
		{name: "one file twice", specs: []string{a, a}, want: []string{a + field}},
		{name: "ports disagree", specs: []string{a, port},
			err: a + field + ".podDiscoveryConfig.socketPort 6557 and " + port + field + ".podDiscoveryConfig.socketPort 5557 disagree"},
		{name: "topics disagree", specs: []string{topic, b},
			err: topic + field + `.topicFilter "kv@x" and ` + b + field + `.topicFilter "kv@" disagree`},
		{name: "bad field in arm b", specs: []string{a, bad}, err: bad + field + `: json: unknown field "topicFiltre"`},
		{name: "two in arm a's file", specs: []string{twoDisagreeing, "random"}, err: twoDisagreeing + two},
		{name: "two agreeing in arm a's file", specs: []string{twoAgreeing}, err: twoAgreeing + two},
		{name: "two in arm b's file", specs: []string{a, twoAgreeing}, err: twoAgreeing + two},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := EndpointPickerKVEventsFiles(tc.specs...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var fields []string
			for _, c := range got {
				fields = append(fields, c.Field)
			}
			if d := cmp.Diff(tc.want, fields); d != "" {
				t.Errorf("configurations (-want +got):\n%s", d)
			}
		})
	}
}

// TestLoaderRefusesTwoKVEventsConfigs: the policy loader refuses an EndpointPickerConfig
// with two kvEventsConfigs as EndpointPickerKVEvents (the router's subscription) does,
// with the same message, so that a caller holding only the loader (the controller,
// deploy) cannot accept a configuration the router would refuse at start; Parse of the
// file (what the router, sim and up build the policy with) gives the router's message for
// the file (EndpointPickerKVEventsFile's).
func TestLoaderRefusesTwoKVEventsConfigs(t *testing.T) {
	const head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
	precise := func(name, kv string) string {
		s := "- name: " + name + "\n  type: precise-prefix-cache-scorer\n"
		if kv != "" {
			s += "  parameters:\n    kvEventsConfig:\n      " + kv + "\n"
		}
		return s
	}
	single := func(a, b string) string {
		return head + "plugins:\n" + a + b + "- type: max-score-picker\nschedulingProfiles:\n- name: default\n  plugins:\n" +
			"  - pluginRef: p1\n  - pluginRef: p2\n  - pluginRef: max-score-picker\n"
	}
	pd := func(plugins, prefill, decode string) string {
		return head + "plugins:\n" + plugins +
			"- type: prefill-filter\n- type: decode-filter\n- type: max-score-picker\n" +
			"- type: prefix-based-pd-decider\n  parameters:\n    nonCachedTokens: 16\n" +
			"- type: pd-profile-handler\n  parameters:\n    deciderPluginName: prefix-based-pd-decider\n" +
			"schedulingProfiles:\n" +
			"- name: prefill\n  plugins:\n  - pluginRef: prefill-filter\n  - pluginRef: max-score-picker\n  - pluginRef: " + prefill + "\n" +
			"- name: decode\n  plugins:\n  - pluginRef: decode-filter\n  - pluginRef: max-score-picker\n  - pluginRef: " + decode + "\n"
	}
	const two = "plugins[0].parameters.kvEventsConfig and plugins[1].parameters.kvEventsConfig: two kvEventsConfigs; the router subscribes once per endpoint, so give one"
	for _, tc := range []struct {
		name string
		doc  string
		want string // the kvEventsConfig's Field, when accepted
		err  string
		// same: every reader's error is the router's (EndpointPickerKVEvents's, and
		// EndpointPickerKVEventsFile's for Parse), word for word.
		same bool
	}{
		{name: "two disagreeing", doc: single(precise("p1", "topicFilter: kv@"), precise("p2", "topicFilter: kv@x")), err: two, same: true},
		{name: "two agreeing", doc: single(precise("p1", "topicFilter: kv@"), precise("p2", "topicFilter: kv@")), err: two, same: true},
		{name: "one of two scorers", doc: single(precise("p1", "topicFilter: kv@"), precise("p2", "")), want: "plugins[0].parameters.kvEventsConfig"},
		{name: "the second of two scorers", doc: single(precise("p1", ""), precise("p2", "topicFilter: kv@")), want: "plugins[1].parameters.kvEventsConfig"},
		{name: "null and one", doc: single(precise("p1", "null"), precise("p2", "topicFilter: kv@")), want: "plugins[1].parameters.kvEventsConfig"},
		{name: "P/D, one per profile", doc: pd(precise("p1", "topicFilter: kv@")+precise("p2", "topicFilter: kv@"), "p1", "p2"), err: two, same: true},
		{name: "P/D, one scorer in both profiles", doc: pd(precise("p1", "topicFilter: kv@"), "p1", "p1"), want: "plugins[0].parameters.kvEventsConfig"},
		// A bad field is the plugin's own error, before the count.
		{name: "bad field in the second", doc: single(precise("p1", "topicFilter: kv@"), precise("p2", "topicFiltre: kv@")),
			err: `plugins[1].parameters.kvEventsConfig: json: unknown field "topicFiltre"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "epp.yaml")
			if err := os.WriteFile(file, []byte(tc.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			env := policies.Env{BlockSize: 16}
			kc, kvErr := EndpointPickerKVEvents([]byte(tc.doc))
			_, fileErr := EndpointPickerKVEventsFile(file)
			_, loadErr := LoadEndpointPickerConfig([]byte(tc.doc), env)
			_, parseErr := Parse(file, env)
			if tc.err != "" {
				for _, c := range []struct {
					what     string
					err, the error // the, when tc.same: the router's error, which err must equal
				}{
					{"EndpointPickerKVEvents", kvErr, nil},
					{"EndpointPickerKVEventsFile", fileErr, nil},
					{"LoadEndpointPickerConfig", loadErr, kvErr},
					{"Parse", parseErr, fileErr},
				} {
					switch {
					case c.err == nil || !strings.Contains(c.err.Error(), tc.err):
						t.Errorf("%s: error %v, want one containing %q", c.what, c.err, tc.err)
					case tc.same && c.the != nil && c.err.Error() != c.the.Error():
						t.Errorf("%s: error %q, want the router's %q", c.what, c.err, c.the)
					}
				}
				return
			}
			if kvErr != nil || fileErr != nil || loadErr != nil || parseErr != nil {
				t.Fatalf("EndpointPickerKVEvents: %v; EndpointPickerKVEventsFile: %v; LoadEndpointPickerConfig: %v; Parse: %v", kvErr, fileErr, loadErr, parseErr)
			}
			if kc == nil || kc.Field != tc.want {
				t.Errorf("kvEventsConfig %+v, want one read from %s", kc, tc.want)
			}
		})
	}
}

func TestKVEventsFlagsAgree(t *testing.T) {
	kc := func(field string, port int, topic string) *KVEventsConfig {
		c := DefaultKVEventsConfig()
		c.PodDiscoveryConfig.SocketPort, c.TopicFilter, c.Field = port, topic, field
		return &c
	}
	one := []*KVEventsConfig{kc("a.yaml: plugins[0].parameters.kvEventsConfig", 5557, "kv@")}
	two := append(one[:1:1], kc("b.yaml: plugins[1].parameters.kvEventsConfig", 5557, "kv@"))
	tests := []struct {
		name    string
		port    int
		topic   string
		kcs     []*KVEventsConfig
		wantErr string
	}{
		{name: "no files, flags given", port: 6000, topic: "x@"},
		{name: "file, no flags", kcs: one},
		{name: "flags agree", port: 5557, topic: "kv@", kcs: two},
		{name: "port disagrees", port: 6000, kcs: one,
			wantErr: `--kv-events-socket-port 6000 and a.yaml: plugins[0].parameters.kvEventsConfig.podDiscoveryConfig.socketPort 5557 disagree; give one`},
		{name: "topic disagrees, both files named", topic: "x@", kcs: two,
			wantErr: `--kv-events-topic-filter "x@" and a.yaml: plugins[0].parameters.kvEventsConfig.topicFilter "kv@" and b.yaml: plugins[1].parameters.kvEventsConfig.topicFilter "kv@" disagree; give one`},
		{name: "port checked before topic", port: 1, topic: "x@", kcs: one,
			wantErr: `--kv-events-socket-port 1 and a.yaml: plugins[0].parameters.kvEventsConfig.podDiscoveryConfig.socketPort 5557 disagree; give one`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := KVEventsFlagsAgree(tt.port, tt.topic, tt.kcs)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if diff := cmp.Diff(tt.wantErr, got); diff != "" {
				t.Errorf("KVEventsFlagsAgree(%d, %q) error (-want +got):\n%s", tt.port, tt.topic, diff)
			}
		})
	}
}
