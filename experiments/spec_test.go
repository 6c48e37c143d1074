package experiments

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/batch"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
)

// trace is the shipped Azure slice, relative to this package's test specs in testdata/.
const trace = "../../examples/traces/azure_conv_3000.csv"

func TestParseNamesTheBadKey(t *testing.T) {
	base := "name: t\nworkload: {trace: " + trace + "}\npolicies: {routers: [round-robin]}\n"
	tests := []struct {
		name, spec, want string
	}{
		{"unknown top-level key", base + "sedes: [1]\n", "sedes: unknown key"},
		{"unknown nested key", base + "cluster: {instnces: 4}\n", "cluster.instnces: unknown key"},
		{"unknown key in a synthetic workload", "name: t\nworkload: {synthetic: {requets: 3}}\npolicies: {routers: [round-robin]}\n", "workload.synthetic.requets: unknown key"},
		{"wrong type", base + "cluster: {instances: four}\n", "cluster.instances: want int"},
		{"seeds not a list", base + "seeds: one\n", "seeds: want"},
		{"bad router", "name: t\nworkload: {trace: " + trace + "}\npolicies: {routers: [round-robin, nearest]}\n", "policies.routers[1]"},
		{"bad evictor", base + "policies: {routers: [round-robin], evict: [lru, mru]}\n", "policies.evict[1]"},
		{"bad batch", base + "policies: {routers: [round-robin], batch: [vllm:max_num_seqs=-1]}\n", "policies.batch[0]"},
		{"negative rate scale", "name: t\nworkload: {trace: " + trace + ", rate_scale: [1, -2]}\npolicies: {routers: [round-robin]}\n", "workload.rate_scale[1]"},
		{"missing trace file", "name: t\nworkload: {trace: nowhere.csv}\npolicies: {routers: [round-robin]}\n", "workload.trace"},
		{"no workload", "name: t\npolicies: {routers: [round-robin]}\n", "workload: give trace or synthetic"},
		{"no routers", "name: t\nworkload: {trace: " + trace + "}\n", "policies.routers"},
		{"no name", "workload: {trace: " + trace + "}\npolicies: {routers: [round-robin]}\n", "name: required"},
		{"name unfit for a directory", strings.Replace(base, "name: t", "name: a/b", 1), "name:"},
		{"unknown GPU", base + "cluster: {gpu: tpu-v9}\n", "cluster:"},
		{"zero instances", base + "cluster: {instances: 0}\n", "cluster.instances: must be positive, got 0"},
		{"negative instances", base + "cluster: {instances: -2}\n", "cluster.instances: must be positive, got -2"},
		{"zero tp", base + "cluster: {tp: 0}\n", "cluster.tp: must be positive"},
		{"zero block size", base + "cluster: {block_size: 0}\n", "cluster.block_size: must be positive"},
		{"negative block count", base + "cluster: {num_gpu_blocks_override: -1}\n", "cluster.num_gpu_blocks_override: must not be negative"},
		{"memory fraction over 1", base + "cluster: {gpu_memory_utilization: 1.5}\n", "cluster.gpu_memory_utilization: want a fraction in (0, 1]"},
		{"zero memory fraction", base + "cluster: {gpu_memory_utilization: 0}\n", "cluster.gpu_memory_utilization: want a fraction in (0, 1]"},
		{"negative max_model_len", base + "cluster: {max_model_len: -5}\n", "cluster.max_model_len: must not be negative"},
		{"scrape interval past an hour", base + "cluster: {scrape_interval_s: 1e308}\n", "cluster.scrape_interval_s"},
		{"real world without a model directory", base + "world: real\n", "cluster.model"},
		{"real world with a GPU", base + "world: real\ncluster: {gpu: h100}\n", "cluster.gpu"},
		{"negative scrape interval", base + "cluster: {scrape_interval_s: -0.05}\n", "scrape_interval_s: must be 0 or a positive number of seconds"},
		{"negative KV-event delay", base + "cluster: {kv_event_delay_s: -1}\n", "kv_event_delay_s: must be 0 or a positive number of seconds"},
		{"real world with a KV-event delay", base + "world: real\ncluster: {kv_event_delay_s: 0.002}\n", "cluster.kv_event_delay_s"},
		{"unknown world", base + "world: dream\n", "world:"},
		{"negative token scale", "name: t\nworkload: {trace: " + trace + ", token_scale: -1}\npolicies: {routers: [round-robin]}\n", "workload.token_scale"},
		{"negative output token scale", "name: t\nworkload: {trace: " + trace + ", output_token_scale: -1}\npolicies: {routers: [round-robin]}\n", "workload.output_token_scale: must be positive"},
		{"bad window", "name: t\nworkload: {trace: " + trace + ", window: {start_s: 5, end_s: 2}}\npolicies: {routers: [round-robin]}\n", "workload.window"},
		{"pools with instances", base + "cluster: {instances: 2, pools: [{name: a, role: both, instances: 1, gpu: l4}]}\n", "cluster.instances: set together with cluster.pools"},
		{"pools with a gpu", base + "cluster: {gpu: h100, pools: [{name: a, role: both, instances: 1, gpu: l4}]}\n", "cluster.gpu: set together with cluster.pools"},
		{"pool on an unknown GPU", base + "cluster: {pools: [{name: a, role: both, instances: 1, gpu: tpu-v9}]}\n", `cluster: pools[0].gpu: unknown GPU "tpu-v9"`},
		{"negative pool instances", base + "cluster: {pools: [{name: a, instances: -1, gpu: l4}]}\n", "cluster: pools[0].instances: must be positive"},
		{"duplicate pool names", base + "cluster: {pools: [{name: a, instances: 1, gpu: l4}, {name: a, instances: 1, gpu: h100}]}\n", `cluster: pools[1].name: pool "a" appears twice`},
		{"prefill pools only", base + "cluster: {pools: [{name: p, role: prefill, instances: 1, gpu: a100-80g}]}\n",
			"cluster: pools: every pool has role prefill"},
		{"unknown KV link", base + "cluster: {kv_link: smoke-signals, pools: [{name: p, role: prefill, instances: 1, gpu: a100-80g}, {name: d, role: decode, instances: 2, gpu: l4}]}\n",
			`cluster: kv_link: unknown KV link "smoke-signals"`},
		{"unknown key in a pool", base + "cluster: {pools: [{name: a, instnces: 1, gpu: l4}]}\n", "instnces: unknown key"},
		{"negative GPU price", base + "cluster: {gpu_price_per_hour: {a100-80g: -3.2}}\n", "cluster: gpu_price_per_hour.a100-80g: must be 0 or a positive number"},
		{"price of an unknown GPU", base + "cluster: {gpu_price_per_hour: {b300: 9}}\n", `cluster: gpu_price_per_hour: unknown GPU "b300"`},
		{"cluster and clusters", base + "cluster: {instances: 2}\nclusters: [{name: a}]\n", "cluster: give cluster or clusters, not both"},
		{"unnamed entry of clusters", base + "clusters: [{name: a}, {instances: 2}]\n", "clusters[1].name: required"},
		{"duplicate cluster names", base + "clusters: [{name: a}, {name: a, gpu: l4}]\n", `clusters[1].name: "a" is clusters[0]'s name too`},
		{"cluster name unfit for a directory", base + "clusters: [{name: a/b}]\n", `clusters[0].name: "a/b"`},
		{"cluster name with the cell id separator", base + "clusters: [{name: a__b}]\n", `clusters[0].name: "a__b"`},
		{"named lone cluster", base + "cluster: {name: a}\n", "cluster.name: only the entries of clusters are named"},
		{"zero instances in an entry of clusters", base + "clusters: [{name: a}, {name: b, instances: 0}]\n", "clusters[1].instances: must be positive, got 0"},
		{"pools with a gpu in an entry of clusters", base + "clusters: [{name: a, gpu: h100, pools: [{name: p, instances: 1, gpu: l4}]}]\n", "clusters[0].gpu: set together with clusters[0].pools"},
		{"unknown GPU in an entry of clusters", base + "clusters: [{name: a}, {name: b, gpu: tpu-v9}]\n", "clusters[1]:"},
		{"unknown key in an entry of clusters", base + "clusters: [{name: a, instnces: 2}]\n", "clusters[0].instnces: unknown key"},
		{"a profile in an entry of clusters", base + "clusters: [{name: a, latency: profile:p.json}]\n", "clusters[0].latency: profile:p.json runs one profiled engine"},
		{"real world with clusters", base + "world: real\nclusters: [{name: a}]\n", "clusters: the real world runs one local cluster"},
		{"real world with a pool's GPU", base + "world: real\ncluster: {pools: [{name: a, instances: 1, gpu: l4}]}\n", "cluster.pools[0].gpu: the real world runs"},
		{"real world with a KV link", base + "world: real\ncluster: {kv_link: rdma, pools: [{name: p, role: prefill, instances: 1}, {name: d, role: decode, instances: 1}]}\n", "cluster.kv_link: the real world"},
		{"real world decode pool without prefill", base + "world: real\ncluster: {pools: [{name: d, role: decode, instances: 2}]}\n", "cluster.pools: a pool has role decode but none has role prefill"},
		{"real world prefill_router without prefill pool", base + "world: real\ncluster: {prefill_router: round-robin, pools: [{name: a, instances: 2}]}\n", "no pool has role prefill"},
		{"real world tier preset", base + "world: real\ncluster: {kv_tiers: [{medium: disk, blocks: 10, preset: nvme}]}\n", "cluster.kv_tiers[0]: preset, bandwidth_gbps and latency_us"},
		{"real world unknown tier evict", base + "world: real\ncluster: {kv_tiers: [{medium: cpu, blocks: 10, evict: lru2}]}\n", "cluster.kv_tiers[0].evict"},
		{"A/B fraction without a router", base + "cluster: {ab_fraction: 0.2}\n", "cluster.ab_fraction: 0.2 without cluster.ab_router"},
		{"A/B router without a fraction", base + "cluster: {ab_router: least-request}\n", "cluster.ab_fraction: required with cluster.ab_router"},
		{"A/B fraction over 1", base + "cluster: {ab_router: least-request, ab_fraction: 1.5}\n", "cluster.ab_fraction: want the share of requests in arm b, from 0 to 1, got 1.5"},
		{"negative A/B fraction", base + "clusters: [{name: a}, {name: b, ab_router: least-request, ab_fraction: -0.1}]\n", "clusters[1].ab_fraction: want the share"},
		{"bad A/B router", base + "cluster: {ab_router: nearest, ab_fraction: 0.5}\n", "cluster.ab_router:"},
		{"A/B router a P/D config", base + "cluster: {ab_router: ../../examples/router/llm-d-pd.yaml, ab_fraction: 0.5}\n", "cluster.ab_router: ../../examples/router/llm-d-pd.yaml is a P/D EndpointPickerConfig"},
		{"A/B in a disaggregated cluster", base + "cluster: {ab_router: least-request, ab_fraction: 0.5, pools: [{name: p, role: prefill, instances: 1, gpu: h100}, {name: d, role: decode, instances: 1, gpu: h100}]}\n",
			"cluster.ab_router: an A/B test of routing policies cannot run in a disaggregated cluster (pool p has role prefill)"},
		{"A/B with a P/D config as arm a", "name: t\nworkload: {trace: " + trace + "}\npolicies: {routers: [round-robin, ../../examples/router/llm-d-pd.yaml]}\ncluster: {ab_router: least-request, ab_fraction: 0.5}\n",
			"policies.routers[1]: ../../examples/router/llm-d-pd.yaml is a P/D EndpointPickerConfig, which cannot be arm a of cluster.ab_router's A/B test"},
		{"not YAML", "name: [", "spec.yaml"},
		{"empty", "", "empty spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.spec), filepath.Join("testdata", "spec.yaml"))
			if err == nil {
				t.Fatalf("Parse accepted\n%s", tt.spec)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "spec.yaml") {
				t.Errorf("error %q does not name %q and the file", err, tt.want)
			}
		})
	}
}

// TestParseRefusesTheKVEventsConfigsTheRouterRefuses: what servelab router refuses of the
// EndpointPickerConfigs' kvEventsConfigs (route.EndpointPickerKVEventsFiles: two in one
// file, or an A/B cell's router and ab_router files that disagree, since the arms share
// one KV-event subscription per endpoint) is refused when the spec is parsed, in both
// worlds, for every router, not when a cell runs; the error names the spec file, its keys
// and both EndpointPickerConfig files' fields. Files that agree are accepted.
func TestParseRefusesTheKVEventsConfigsTheRouterRefuses(t *testing.T) {
	dir := t.TempDir()
	// epp writes an EndpointPickerConfig beside the spec with one
	// precise-prefix-cache-scorer per kvEventsConfig in kvs (YAML, indented as a parameter).
	epp := func(name string, kvs ...string) string {
		t.Helper()
		var plugins, refs strings.Builder
		for i, kv := range kvs {
			fmt.Fprintf(&plugins, "- name: precise-%d\n  type: precise-prefix-cache-scorer\n  parameters:\n    kvEventsConfig:\n%s", i, kv)
			fmt.Fprintf(&refs, "  - pluginRef: precise-%d\n", i)
		}
		data := "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n" + plugins.String() +
			"schedulingProfiles:\n- name: default\n  plugins:\n" + refs.String()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return name
	}
	const kv = "      topicFilter: kv@\n      podDiscoveryConfig:\n        socketPort: 6557\n"
	a := epp("a.yaml", kv)
	b := epp("b.yaml", kv+"      concurrency: 8\n") // agrees with a.yaml: concurrency has no effect on the subscription
	port := epp("port.yaml", "      topicFilter: kv@\n      podDiscoveryConfig:\n        socketPort: 5557\n")
	topic := epp("topic.yaml", "      topicFilter: kv@x\n      podDiscoveryConfig:\n        socketPort: 6557\n")
	two := epp("two.yaml", kv, "      topicFilter: kv@x\n")
	twoAgreeing := epp("two-agreeing.yaml", kv, kv)
	model := filepath.Join(dir, "tiny")
	if err := os.MkdirAll(model, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(model, "config.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(dir, "spec.yaml")
	absTrace, err := filepath.Abs("../examples/traces/azure_conv_3000.csv")
	if err != nil {
		t.Fatal(err)
	}
	at := func(f string) string { return filepath.Join(dir, f) + ": plugins[0].parameters.kvEventsConfig" }
	twoOf := func(f string) string {
		return filepath.Join(dir, f) + ": plugins[0].parameters.kvEventsConfig and plugins[1].parameters.kvEventsConfig: two kvEventsConfigs"
	}
	portsDisagree := at(a) + ".podDiscoveryConfig.socketPort 6557 and " + at(port) + ".podDiscoveryConfig.socketPort 5557 disagree"
	topicsDisagree := at(a) + `.topicFilter "kv@" and ` + at(topic) + `.topicFilter "kv@x" disagree`
	const sim, real = "", "world: real\n"
	for _, tt := range []struct {
		name, world, routers, cluster string // routers: policies.routers' list; cluster: the cluster or clusters key
		want                          string // "" accepts; else the error after the spec file's name
	}{
		{"agreeing arms", sim, "[" + a + "]", "cluster: {ab_router: " + b + ", ab_fraction: 0.5}", ""},
		{"agreeing arms, real world", real, "[" + a + "]", "cluster: {model: tiny, ab_router: " + b + ", ab_fraction: 0.5}", ""},
		{"one file in both arms", sim, "[round-robin, " + a + "]", "cluster: {ab_router: " + a + ", ab_fraction: 0.5}", ""},
		{"ports disagree", sim, "[" + a + "]", "cluster: {ab_router: " + port + ", ab_fraction: 0.5}",
			"policies.routers[0] and cluster.ab_router: " + portsDisagree},
		{"ports disagree, real world", real, "[" + a + "]", "cluster: {model: tiny, ab_router: " + port + ", ab_fraction: 0.5}",
			"policies.routers[0] and cluster.ab_router: " + portsDisagree},
		{"topics disagree in a later router and cluster", sim, "[round-robin, " + a + "]", "clusters: [{name: c1}, {name: c2, ab_router: " + topic + ", ab_fraction: 0.5}]",
			"policies.routers[1] and clusters[1].ab_router: " + topicsDisagree},
		{"topics disagree, real world", real, "[round-robin, " + a + "]", "cluster: {model: tiny, ab_router: " + topic + ", ab_fraction: 0.5}",
			"policies.routers[1] and cluster.ab_router: " + topicsDisagree},
		{"two in a router's file", sim, "[round-robin, " + two + "]", "cluster: {}", "policies.routers[1]: " + twoOf(two)},
		{"two agreeing in a router's file", sim, "[" + twoAgreeing + "]", "cluster: {}", "policies.routers[0]: " + twoOf(twoAgreeing)},
		{"two in a router's file, real world", real, "[" + two + "]", "cluster: {model: tiny}", "policies.routers[0]: " + twoOf(two)},
		{"two in ab_router's file", sim, "[round-robin]", "cluster: {ab_router: " + two + ", ab_fraction: 0.5}", "cluster.ab_router: " + twoOf(two)},
		{"two in ab_router's file, real world", real, "[" + a + "]", "cluster: {model: tiny, ab_router: " + twoAgreeing + ", ab_fraction: 0.5}",
			"cluster.ab_router: " + twoOf(twoAgreeing)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec := "name: t\n" + tt.world + "workload: {trace: " + absTrace + "}\npolicies: {routers: " + tt.routers + "}\n" + tt.cluster + "\n"
			_, err := Parse([]byte(spec), specPath)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse refused\n%s: %v", spec, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted\n%s", spec)
			}
			if want := specPath + ": " + tt.want; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q\nwant one starting %q", err, want)
			}
		})
	}
}

func TestExamplesParse(t *testing.T) {
	paths, err := filepath.Glob("examples/*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, p := range paths {
		s, err := Load(p)
		if err != nil && strings.Contains(err.Error(), "cluster.model") {
			t.Logf("%s needs its model (make run makes it): %v", p, err)
			continue
		}
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if len(s.Cells()) < 2 {
			t.Errorf("%s: %d cells", p, len(s.Cells()))
		}
	}
}

func TestCellsCoverTheMatrix(t *testing.T) {
	s, err := Parse([]byte("name: t\nworkload: {trace: "+trace+", rate_scale: [1, 2.5]}\n"+
		"policies: {routers: [round-robin, \"weighted:prefix=3,queue=1\"], evict: [lru, lfu]}\nseeds: [1, 2]\n"),
		filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cells := s.Cells()
	if len(cells) != 2*2*2*2 {
		t.Fatalf("%d cells, want 16", len(cells))
	}
	want := Cell{ID: "weighted-prefix=3-queue=1__vllm__lfu__s2__x2.5", Router: "weighted:prefix=3,queue=1",
		Batch: "vllm", Evict: "lfu", Seed: 2, RateScale: 2.5}
	if diff := cmp.Diff(want, cells[len(cells)-1]); diff != "" {
		t.Errorf("last cell (-want +got):\n%s", diff)
	}
}

// A spec of pools and prices normalizes to its pools as they run, and parses back to the
// same cluster.
func TestNormalizedKeepsPoolsAndPrices(t *testing.T) {
	spec := "name: t\nworkload: {trace: " + trace + "}\npolicies: {routers: [round-robin]}\n" +
		"cluster: {pools: [{name: big, instances: 2, gpu: a100-80g, tp: 2}, {name: small, role: both, instances: 3, gpu: l4}], gpu_price_per_hour: {l4: 0.5}}\n"
	s, err := Parse([]byte(spec), filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Instances(); got != 5 {
		t.Errorf("Instances() = %d, want the pools' 5", got)
	}
	norm, err := s.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(norm, filepath.Join(t.TempDir(), "spec.yaml"))
	if err != nil {
		t.Fatalf("the normalized spec does not parse: %v\n%s", err, norm)
	}
	want := []sim.PoolSpec{{Name: "big", Role: "both", Instances: 2, GPU: "a100-80g", TP: 2}, {Name: "small", Role: "both", Instances: 3, GPU: "l4", TP: 1}}
	if diff := cmp.Diff(want, again.Cluster.Pools); diff != "" {
		t.Errorf("normalized pools (-want +got):\n%s\n%s", diff, norm)
	}
	if diff := cmp.Diff(map[string]float64{"l4": 0.5}, again.Cluster.GPUPricePerHour); diff != "" {
		t.Errorf("normalized prices (-want +got):\n%s", diff)
	}
	if again.Cluster.Instances != 0 || again.Cluster.GPU != "" || again.Cluster.TP != 0 {
		t.Errorf("normalized cluster has instances %d, gpu %q, tp %d besides its pools", again.Cluster.Instances, again.Cluster.GPU, again.Cluster.TP)
	}
}

func TestNormalizedParsesBackToTheSameSpec(t *testing.T) {
	s, err := Load("examples/mooncake-load-sweep.yaml")
	if err != nil {
		t.Fatal(err)
	}
	norm, err := s.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	again, err := Parse(norm, filepath.Join(dir, "spec.yaml"))
	if err != nil {
		t.Fatalf("the normalized spec does not parse from another directory: %v\n%s", err, norm)
	}
	if diff := cmp.Diff(s.Cells(), again.Cells()); diff != "" {
		t.Errorf("cells (-first +again):\n%s", diff)
	}
	norm2, _ := again.Normalized()
	if string(norm) != string(norm2) {
		t.Errorf("normalizing twice differs:\n%s\n%s", norm, norm2)
	}
}

// spec.yaml holds the cluster as the simulator resolved it, not "cluster: {}": the values
// come from sim.ClusterSpec.Build, and parsing them back runs the same cluster.
func TestNormalizedWritesTheResolvedCluster(t *testing.T) {
	tests := []struct {
		name, cluster string
	}{
		{"all defaults", ""},
		{"some set", "cluster: {instances: 3, block_size: 32, max_model_len: 4096}\n"},
		{"exact views", "cluster: {scrape_interval_s: 0, kv_event_delay_s: 0}\n"},
		{"stale views", "cluster: {scrape_interval_s: 0.2, kv_event_delay_s: 0.01}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte("name: t\nworkload: {trace: "+trace+"}\npolicies: {routers: [round-robin]}\n"+tt.cluster),
				filepath.Join("testdata", "spec.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			norm, err := s.Normalized()
			if err != nil {
				t.Fatal(err)
			}
			again, err := Parse(norm, filepath.Join(t.TempDir(), "spec.yaml"))
			if err != nil {
				t.Fatalf("%v\n%s", err, norm)
			}
			want := s.clusterSpec("", "round-robin", "vllm", "lru", 0)
			cfg, err := want.Build(s.SLO.Metrics())
			if err != nil {
				t.Fatal(err)
			}
			k := again.Cluster
			if k.EnablePrefixCaching == nil {
				t.Fatalf("enable_prefix_caching not written:\n%s", norm)
			}
			got := sim.ClusterSpec{Instances: k.Instances, Model: k.Model, GPU: k.GPU, TP: k.TP, Latency: k.Latency,
				BlockSize: k.BlockSize, GPUMemoryUtilization: k.GPUMemoryUtilization, EnablePrefixCaching: *k.EnablePrefixCaching,
				MaxModelLen: k.MaxModelLen}
			if k.ScrapeInterval == nil || k.KVEventDelay == nil {
				t.Fatalf("scrape_interval_s or kv_event_delay_s not written:\n%s", norm)
			}
			got.ScrapeInterval, got.KVEventDelay = *k.ScrapeInterval, *k.KVEventDelay
			resolved := want
			resolved.Router, resolved.Batch, resolved.Evict, resolved.Seed = "", "", "", 0
			resolved.MaxModelLen = cfg.MaxModelLen
			if diff := cmp.Diff(resolved, got); diff != "" {
				t.Errorf("spec.yaml's cluster (-resolved +written):\n%s\n%s", diff, norm)
			}
			// Read back, it runs the same cluster; max_model_len, derived before, is explicit now.
			want.MaxModelLen = cfg.MaxModelLen
			if diff := cmp.Diff(want, again.clusterSpec("", "round-robin", "vllm", "lru", 0)); diff != "" {
				t.Errorf("the spec read back runs another cluster (-first +again):\n%s", diff)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, p := range []string{"examples/azure-routers.yaml", "examples/mooncake-load-sweep.yaml"} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(data))
	}
	f.Add("name: s\nworkload: {synthetic: {requests: 20, rate: 5}}\npolicies: {routers: [least-request]}\n")
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := Parse([]byte(spec), "examples/fuzz.yaml")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.yaml") {
				t.Errorf("error %q does not name the file", err)
			}
			return
		}
		if len(s.Cells()) == 0 {
			t.Errorf("an accepted spec has no cells")
		}
		if _, err := s.Normalized(); err != nil {
			t.Errorf("Normalized: %v", err)
		}
	})
}

// A finished run's spec.yaml still gives its cells when its trace has moved away.
func TestReadSpecOfAFinishedRun(t *testing.T) {
	s, err := Load("examples/mooncake-load-sweep.yaml")
	if err != nil {
		t.Fatal(err)
	}
	norm, err := s.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	moved := strings.Replace(string(norm), "mooncake_conv_500.jsonl", "moved-away.jsonl", 1)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse([]byte(moved), filepath.Join(dir, "spec.yaml")); err == nil {
		t.Fatal("Parse accepted a spec whose trace is gone")
	}
	got, err := ReadSpec(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s.Cells(), got.Cells()); diff != "" {
		t.Errorf("cells (-as run +read back):\n%s", diff)
	}
	if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(moved+"extra: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSpec(dir); err == nil || !strings.Contains(err.Error(), "extra: unknown key") {
		t.Errorf("an unknown key: %v", err)
	}
}

// TestProfiledEngineDecidesTheCells: with cluster.latency profile:FILE, every cell runs the
// profiled engine's KV cache, context and prefix caching, and builds its batch policy as
// the engine does; a cell running the engine's own policy resolves to exactly the
// engine's configuration (the simulator's H100 defaults gave 8,192 tokens per step where
// the CPU engine runs 2,048).
func TestProfiledEngineDecidesTheCells(t *testing.T) {
	dir := t.TempDir()
	// The batch policy as the CPU engine resolves it (cmd/servelab/engine.go's Env).
	bp, _, err := batch.Registry.Parse("vllm", policies.Env{BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	engine := serving.EngineConfig{Batch: bp.Spec().String(), Evict: "lru", BlockSize: 16, NumGPUBlocks: 96, MaxModelLen: 512, EnablePrefixCaching: true}
	if !strings.Contains(engine.Batch, "max_num_batched_tokens=2048") {
		t.Fatalf("the CPU engine's vllm policy resolves to %s; this test expects the non-H100 limits", engine.Batch)
	}
	traceFile, err := filepath.Abs(filepath.Join("testdata", trace))
	if err != nil {
		t.Fatal(err)
	}
	prof := &latency.Profile{Model: "tiny", BlockSize: 16, NumGPUBlocks: 96, MaxModelLen: 512, Engine: &engine,
		Coefficients: latency.LinearCoefficients{Intercept: 1e-4, DecodeSeq: 1e-5, PrefillToken: 1e-6}, Samples: 10}
	if err := prof.Write(filepath.Join(dir, "profile.json")); err != nil {
		t.Fatal(err)
	}
	base := "name: t\nworkload: {trace: " + traceFile + "}\npolicies: {routers: [round-robin]}\n"
	s, err := Parse([]byte(base+"cluster: {latency: profile:profile.json, instances: 2}\n"), filepath.Join(dir, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{engine.Batch}, s.Policies.Batch); diff != "" {
		t.Errorf("default batch policies (-engine's +spec's):\n%s", diff)
	}
	for _, b := range []string{engine.Batch, "vllm"} {
		cfg, err := s.clusterSpec("", "round-robin", b, "lru", 0).Build(s.SLO.Metrics())
		if err != nil {
			t.Fatal(err)
		}
		got, err := cfg.Resolved(1)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(engine, got); diff != "" {
			t.Errorf("batch %q: the cell's instance runs (-engine +cell):\n%s", b, diff)
		}
	}
	// spec.yaml, the spec as run, parses again to the same cells.
	norm, err := s.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(norm, filepath.Join(t.TempDir(), "spec.yaml"))
	if err != nil {
		t.Fatalf("spec.yaml of a profiled run does not parse again: %v\n%s", err, norm)
	}
	if diff := cmp.Diff(s.clusterSpec("", "round-robin", "vllm", "lru", 0), again.clusterSpec("", "round-robin", "vllm", "lru", 0)); diff != "" {
		t.Errorf("cluster from spec.yaml (-spec +spec.yaml):\n%s", diff)
	}
	for _, key := range []string{"block_size: 32", "num_gpu_blocks_override: 10", "max_model_len: 256", "enable_prefix_caching: false", "gpu: h100", "gpu_memory_utilization: 0.5"} {
		spec := base + "cluster: {latency: profile:profile.json, " + key + "}\n"
		_, err := Parse([]byte(spec), filepath.Join(dir, "spec.yaml"))
		if field := strings.SplitN(key, ":", 2)[0]; err == nil || !strings.Contains(err.Error(), "cluster."+field) {
			t.Errorf("%s with a profile that records the engine: err %v, want one naming cluster.%s", key, err, field)
		}
	}
}

// TestKVTiersInSpec: cluster.kv_tiers reaches the simulator, and a bad tier is an error
// naming its key.
func TestKVTiersInSpec(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "t.jsonl")
	if err := os.WriteFile(trace, []byte(`{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := "name: t\nworkload: {trace: t.jsonl}\npolicies: {routers: [round-robin]}\n"
	s, err := Parse([]byte(base+"cluster: {num_gpu_blocks_override: 100, kv_tiers: [{medium: cpu, blocks: 1000, evict: fifo}]}\n"), filepath.Join(dir, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := s.clusterSpec("", "round-robin", "vllm", "lru", 0).Build(s.SLO.Metrics())
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.KVTiers) != 1 || cfg.KVTiers[0].Medium != "CPU" || cfg.KVTiers[0].Blocks != 1000 {
		t.Errorf("tiers %+v, want one CPU tier of 1000 blocks", cfg.KVTiers)
	}
	bad, err := Parse([]byte(base+"cluster: {num_gpu_blocks_override: 100, kv_tiers: [{medium: tape, blocks: 1}]}\n"), filepath.Join(dir, "spec.yaml"))
	if err == nil {
		_, err = bad.Normalized()
	}
	if err == nil || !strings.Contains(err.Error(), `kv_tiers[0].medium: unknown medium "tape"`) {
		t.Errorf("error %v, want one naming kv_tiers[0].medium", err)
	}
}

// The spec as run (spec.yaml) keeps the cluster's flow control and objectives: parsed back,
// it runs the same cells on the same cluster.
func TestNormalizedKeepsFlowControl(t *testing.T) {
	s, err := Load("examples/priority-classes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	norm, err := s.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(norm, filepath.Join(t.TempDir(), "spec.yaml"))
	if err != nil {
		t.Fatalf("the normalized spec does not parse: %v\n%s", err, norm)
	}
	for _, k := range again.clusters() {
		orig := s.cluster(k.Name)
		if k.FlowControl != orig.FlowControl || !cmp.Equal(k.Objectives, orig.Objectives) {
			t.Errorf("cluster %q as run: flow_control %q objectives %v, want %q %v", k.Name, k.FlowControl, k.Objectives, orig.FlowControl, orig.Objectives)
		}
	}
}
