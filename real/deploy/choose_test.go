package deploy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"servelab/api/v1alpha1"
	"servelab/experiments"
	"servelab/metrics"
)

// repoFile is a file of the repository, from this package's directory.
func repoFile(rel string) string { return filepath.Join("..", "..", rel) }

// runExperiment runs a small simulated experiment (the shipped Azure slice, 2 instances) in
// a temporary directory and returns the experiment directory. specDir is where the spec
// "lives": its relative router files resolve there.
func runExperiment(t *testing.T, specDir, extra string, cancel bool) string {
	return runExperimentIn(t, t.TempDir(), specDir, extra, cancel)
}

func runExperimentIn(t *testing.T, root, specDir, extra string, cancel bool) string {
	t.Helper()
	trace, err := filepath.Abs(repoFile("examples/traces/azure_conv_3000.csv"))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := experiments.Parse([]byte("name: deploy_test.1\nworkload: {trace: "+trace+", max_requests: 120, rate_scale: 8}\n"+
		"cluster: {instances: 3, model: llama-3.1-8b, gpu: a100-80g, scrape_interval_s: 0.1}\n"+
		"slo: {ttft_ms: 300, tpot_ms: 50}\n"+extra), filepath.Join(specDir, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "runs", "deploy_test.1")
	ctx := context.Background()
	if cancel {
		c, stop := context.WithCancel(ctx)
		stop()
		ctx = c
	}
	if _, err := experiments.Run(ctx, spec, experiments.Options{Out: out, Parallel: 2}); err != nil && !cancel {
		t.Fatal(err)
	}
	return out
}

var (
	expOnce sync.Once
	expDir  string
	epcDir  string
	// tmpRoot holds what the tests share; TestMain removes it.
	tmpRoot string
)

func TestMain(m *testing.M) {
	var err error
	if tmpRoot, err = os.MkdirTemp("", "servelab-deploy-test"); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

// experiment is one shared run: three routers, one of them an EndpointPickerConfig file
// named relative to the spec's directory, two evictors, two seeds.
func experiment(t *testing.T) (dir, specDir string) {
	t.Helper()
	expOnce.Do(func() {
		epcDir = filepath.Join(tmpRoot, "spec")
		epc, err := os.ReadFile(repoFile("examples/router/llm-d-default.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(epcDir, "router"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(epcDir, "router", "llm-d.yaml"), epc, 0o644); err != nil {
			t.Fatal(err)
		}
		expDir = runExperimentIn(t, tmpRoot, epcDir, "policies: {routers: [round-robin, least-request, router/llm-d.yaml], evict: [lru, lfu]}\nseeds: [1, 2]\n", false)
	})
	if expDir == "" {
		t.Fatal("the shared experiment did not run")
	}
	return expDir, epcDir
}

func TestChooseBestIsTheReportsFirst(t *testing.T) {
	dir, _ := experiment(t)
	res, err := experiments.ReadResults(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The ranking, recomputed: highest goodput, then lowest p99 TTFT.
	best := &res.Policies[0]
	for i := range res.Policies {
		p := &res.Policies[i]
		if p.RequestGoodput.Mean > best.RequestGoodput.Mean ||
			p.RequestGoodput.Mean == best.RequestGoodput.Mean && p.P99TTFTMs.Mean < best.P99TTFTMs.Mean {
			best = p
		}
	}
	c, err := Choose(dir, ChooseOptions{Best: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.Label != best.Name() {
		t.Errorf("picked %q, want %q (goodput %v)", c.Label, best.Name(), best.RequestGoodput.Mean)
	}
	if !strings.Contains(c.Why, "ranked 1st of 6 by request goodput") {
		t.Errorf("why: %q", c.Why)
	}
}

func TestChoosePolicyByLabel(t *testing.T) {
	dir, _ := experiment(t)
	for _, label := range []string{"least-request / lfu", "least-request/lfu", "router/llm-d.yaml / lru"} {
		c, err := Choose(dir, ChooseOptions{Policy: label})
		if err != nil {
			t.Fatalf("%q: %v", label, err)
		}
		if normLabel(c.Label) != normLabel(label) || c.Result.Seeds != 2 {
			t.Errorf("%q: chose %q over %d seeds", label, c.Label, c.Result.Seeds)
		}
		if !strings.Contains(c.Why, " of 6 by request goodput") {
			t.Errorf("%q: why %q", label, c.Why)
		}
	}
}

func TestChooseErrors(t *testing.T) {
	dir, _ := experiment(t)
	failed := runExperiment(t, t.TempDir(), "policies: {routers: [round-robin]}\n", true)
	notExp := t.TempDir()
	file := filepath.Join(notExp, "results.json")
	os.WriteFile(file, []byte("{}"), 0o644)
	for _, tc := range []struct {
		name string
		dir  string
		o    ChooseOptions
		want string
	}{
		{"missing directory", filepath.Join(notExp, "nope"), ChooseOptions{Best: true}, "no such experiment directory"},
		{"a file", file, ChooseOptions{Best: true}, "not a directory"},
		{"no results", t.TempDir(), ChooseOptions{Best: true}, "not an experiment directory: no results.json"},
		{"unknown label", dir, ChooseOptions{Policy: "random / lru"}, `--policy "random / lru": experiment deploy_test.1 has no such policy; its policies are: "`},
		{"neither", dir, ChooseOptions{}, "give one of --pick best and --policy"},
		{"both", dir, ChooseOptions{Best: true, Policy: "x"}, "give one of --pick best and --policy"},
		{"unknown rate", dir, ChooseOptions{Best: true, RateScale: 3}, "--rate-scale 3: the experiment ran at ×8"},
		{"no finished cells, best", failed, ChooseOptions{Best: true}, "no policy finished a cell"},
		{"no finished cells, label", failed, ChooseOptions{Policy: "round-robin / lru"}, `--policy "round-robin / lru": no cell of it finished`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Choose(tc.dir, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestChooseBestInASweepNeedsTheRate(t *testing.T) {
	trace, _ := filepath.Abs(repoFile("examples/traces/azure_conv_3000.csv"))
	spec, err := experiments.Parse([]byte("name: sweep\nworkload: {trace: "+trace+", max_requests: 60, rate_scale: [2, 8]}\n"+
		"cluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\npolicies: {routers: [round-robin, least-request]}\n"), "spec.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := experiments.Run(context.Background(), spec, experiments.Options{Out: out, Parallel: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := Choose(out, ChooseOptions{Best: true}); err == nil || !strings.Contains(err.Error(), "sweeps rate_scale (×2, ×8)") {
		t.Fatalf("error %v", err)
	}
	c, err := Choose(out, ChooseOptions{Best: true, RateScale: 8})
	if err != nil {
		t.Fatal(err)
	}
	if c.Result.RateScale != 8 || !strings.Contains(c.Why, "at rate ×8") {
		t.Errorf("chose %s at ×%v: %s", c.Label, c.Result.RateScale, c.Why)
	}
	// A label without --rate-scale: its results at the highest rate.
	c, err = Choose(out, ChooseOptions{Policy: "round-robin / lru"})
	if err != nil || c.Result.RateScale != 8 {
		t.Fatalf("%v, %+v", err, c)
	}
}

func TestServiceFromChoice(t *testing.T) {
	dir, specDir := experiment(t)
	epc, err := os.ReadFile(filepath.Join(specDir, "router", "llm-d.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	source := func(label string) *v1alpha1.PolicySource {
		return &v1alpha1.PolicySource{Experiment: "deploy_test.1", Policy: label}
	}
	for _, tc := range []struct {
		label string
		o     ServiceOptions
		want  v1alpha1.LLMServiceSpec
		name  string
	}{
		{"least-request / lfu", ServiceOptions{ModelURI: "pvc://models/llama/8b", Namespace: "ml"},
			v1alpha1.LLMServiceSpec{
				Model:        v1alpha1.ModelSpec{Name: "8b", URI: "pvc://models/llama/8b"},
				WorkloadSpec: v1alpha1.WorkloadSpec{Replicas: ptr.To[int32](3)},
				Router:       v1alpha1.RouterSpec{Policy: "least-request", ScrapeInterval: &metav1.Duration{Duration: 100e6}},
				Batch:        "vllm", Evict: "lfu", Source: source("least-request / lfu"),
			}, "deploy-test-1"},
		{"router/llm-d.yaml / lru", ServiceOptions{Name: "chat", ModelURI: "file:///models/tiny", ServedModelName: "tiny-llama",
			Replicas: ptr.To[int32](5), Image: "registry.example/servelab:v1", Dir: specDir},
			v1alpha1.LLMServiceSpec{
				Model: v1alpha1.ModelSpec{Name: "tiny-llama", URI: "file:///models/tiny"},
				WorkloadSpec: v1alpha1.WorkloadSpec{Replicas: ptr.To[int32](5),
					Template: v1alpha1.EngineTemplate{Image: "registry.example/servelab:v1"}},
				Router: v1alpha1.RouterSpec{EndpointPickerConfig: string(epc), ScrapeInterval: &metav1.Duration{Duration: 100e6}},
				Batch:  "vllm", Evict: "lru", Source: source("router/llm-d.yaml / lru"),
			}, "chat"},
	} {
		t.Run(tc.label, func(t *testing.T) {
			c, err := Choose(dir, ChooseOptions{Policy: tc.label})
			if err != nil {
				t.Fatal(err)
			}
			svc, err := Service(c, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, svc.Spec); diff != "" {
				t.Errorf("spec (-want +got):\n%s", diff)
			}
			if svc.Name != tc.name || svc.Namespace != tc.o.Namespace || svc.Kind != "LLMService" || svc.APIVersion != "servelab.io/v1alpha1" {
				t.Errorf("object %s %s/%s", svc.APIVersion+"/"+svc.Kind, svc.Namespace, svc.Name)
			}
		})
	}
}

// withTwoKVEvents is the EndpointPickerConfig doc with two precise-prefix-cache-scorers
// after its plugins' queue-scorer, each with a kvEventsConfig: a file the router refuses
// (it subscribes once per endpoint), with twoKVEventsErr, when queue-scorer is plugins[1].
func withTwoKVEvents(t *testing.T, doc string) string {
	t.Helper()
	const queue = "- type: queue-scorer\n"
	if !strings.Contains(doc, queue) {
		t.Fatalf("no %q in %q", queue, doc)
	}
	return strings.Replace(doc, queue, queue+
		"- name: precise-a\n  type: precise-prefix-cache-scorer\n  parameters: {kvEventsConfig: {topicFilter: kv@}}\n"+
		"- name: precise-b\n  type: precise-prefix-cache-scorer\n  parameters: {kvEventsConfig: {topicFilter: kv@}}\n", 1)
}

const twoKVEventsErr = "plugins[2].parameters.kvEventsConfig and plugins[3].parameters.kvEventsConfig: two kvEventsConfigs"

// policyDir is a directory holding the file rel with doc in it: a --policy-dir.
func policyDir(t *testing.T, rel, doc string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestServiceErrors(t *testing.T) {
	dir, specDir := experiment(t)
	epc, err := os.ReadFile(filepath.Join(specDir, "router", "llm-d.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	twoKVEvents := policyDir(t, "router/llm-d.yaml", withTwoKVEvents(t, string(epc)))
	unknownPlugin := policyDir(t, "router/llm-d.yaml", strings.Replace(string(epc), "- type: single-profile-handler", "- type: no-such-plugin", 1))
	pick := func(label string) *Choice {
		c, err := Choose(dir, ChooseOptions{Policy: label})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name  string
		label string
		o     ServiceOptions
		want  string
	}{
		{"sim needs a model", "round-robin / lru", ServiceOptions{}, `--model-uri: required: the experiment ran the simulator's "llama-3.1-8b"`},
		{"bad scheme", "round-robin / lru", ServiceOptions{ModelURI: "s3://bucket/m"}, `--model-uri "s3://bucket/m": want file:///PATH`},
		{"relative file", "round-robin / lru", ServiceOptions{ModelURI: "file://models/m"}, `want file:///PATH`},
		{"bad claim", "round-robin / lru", ServiceOptions{ModelURI: "pvc://Big_Claim/m"}, `want file:///PATH`},
		{"bad name", "round-robin / lru", ServiceOptions{ModelURI: "file:///m", Name: "Chat_1"}, `--name "Chat_1"`},
		{"long name", "round-robin / lru", ServiceOptions{ModelURI: "file:///m", Name: strings.Repeat("a", 57)}, "at most 56 characters"},
		{"negative replicas", "round-robin / lru", ServiceOptions{ModelURI: "file:///m", Replicas: ptr.To[int32](-1)}, "--replicas: must not be negative"},
		{"policy file not found", "router/llm-d.yaml / lru", ServiceOptions{ModelURI: "file:///m", Dir: t.TempDir()}, `router "router/llm-d.yaml": the experiment's policy file is not in`},
		// The policy file changed since the experiment ran, into one the controller and the
		// router would refuse: refused here, naming the file and the fields.
		{"two kvEventsConfigs", "router/llm-d.yaml / lru", ServiceOptions{ModelURI: "file:///m", Dir: twoKVEvents},
			`router "router/llm-d.yaml": ` + filepath.Join(twoKVEvents, "router", "llm-d.yaml") + ": " + twoKVEventsErr},
		{"unknown plugin", "router/llm-d.yaml / lru", ServiceOptions{ModelURI: "file:///m", Dir: unknownPlugin},
			`router "router/llm-d.yaml": ` + filepath.Join(unknownPlugin, "router", "llm-d.yaml") + ": EndpointPickerConfig: plugins[0].type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Service(pick(tc.label), tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// fakeWorld stands in for the engines of a real-world experiment: prefix-affinity has the
// higher goodput.
type fakeWorld struct{}

func (fakeWorld) RunCell(_ context.Context, rc experiments.RealCell) (*metrics.Summary, error) {
	s := &metrics.Summary{Completed: 10, RequestGoodput: 1, P99TTFTMs: 100}
	if rc.Cell.Router == "prefix-affinity" {
		s.RequestGoodput = 2
	}
	return s, nil
}

// A real-world experiment's engines ran with its KV-cache settings: the deployed ones get
// them as flags, and the model directory it served is the
// default model, named by its directory.
func TestServiceOfARealWorldExperiment(t *testing.T) {
	root := t.TempDir()
	model := filepath.Join(root, "models", "tiny")
	if err := os.MkdirAll(model, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(model, "config.json"), []byte("{}"), 0o644)
	trace, _ := filepath.Abs(repoFile("examples/traces/mooncake_conv_500.jsonl"))
	spec, err := experiments.Parse([]byte("name: real-tiny\nworld: real\nworkload: {trace: "+trace+", max_requests: 5}\n"+
		"cluster: {instances: 2, model: models/tiny, block_size: 32, num_gpu_blocks_override: 1024, max_model_len: 512, enable_prefix_caching: false}\n"+
		"policies: {routers: [round-robin, prefix-affinity]}\n"), filepath.Join(root, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "runs", "real-tiny")
	if _, err := experiments.Run(context.Background(), spec, experiments.Options{Out: out, Real: fakeWorld{}}); err != nil {
		t.Fatal(err)
	}
	c, err := Choose(out, ChooseOptions{Best: true})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := Service(c, ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := v1alpha1.LLMServiceSpec{
		Model: v1alpha1.ModelSpec{Name: "tiny", URI: "file://" + model},
		WorkloadSpec: v1alpha1.WorkloadSpec{Replicas: ptr.To[int32](2), Template: v1alpha1.EngineTemplate{
			Args: []string{"--block-size=32", "--num-gpu-blocks-override=1024", "--max-model-len=512", "--enable-prefix-caching=false"}}},
		Router: v1alpha1.RouterSpec{Policy: "prefix-affinity"},
		Batch:  "vllm", Evict: "lru", Source: &v1alpha1.PolicySource{Experiment: "real-tiny", Policy: "prefix-affinity / lru"},
	}
	if diff := cmp.Diff(want, svc.Spec); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
	if svc.Name != "real-tiny" {
		t.Errorf("name %q", svc.Name)
	}
}

func TestDNSLabel(t *testing.T) {
	for in, want := range map[string]string{
		"azure-routers": "azure-routers", "Real_Tiny.v2": "real-tiny-v2", "8x-load": "llm-8x-load",
		strings.Repeat("a", 70): strings.Repeat("a", 56), "--": "llm",
	} {
		if got := dnsLabel(in); got != want {
			t.Errorf("dnsLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestServiceOfAClusterInClusters: in an experiment comparing clusters, the deployed
// service takes the chosen cell's cluster: its instance count, and for a disaggregated one
// a prefill pool, which needs a P/D EndpointPickerConfig as the router.
func TestServiceOfAClusterInClusters(t *testing.T) {
	specDir := t.TempDir()
	pd, err := os.ReadFile(repoFile("examples/router/llm-d-pd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(specDir, "pd.yaml"), pd, 0o644); err != nil {
		t.Fatal(err)
	}
	trace, err := filepath.Abs(repoFile("examples/traces/azure_conv_3000.csv"))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := experiments.Parse([]byte("name: clusters\nworkload: {trace: "+trace+", max_requests: 60, rate_scale: 4}\n"+
		"clusters:\n"+
		"  - {name: colo, instances: 3, model: llama-3.1-8b, gpu: a100-80g}\n"+
		"  - name: split\n    model: llama-3.1-8b\n    pools: [{name: p, role: prefill, instances: 1, gpu: a100-80g}, {name: d, role: decode, instances: 2, gpu: l4}]\n"+
		"policies: {routers: [least-request, pd.yaml]}\nslo: {ttft_ms: 1000, tpot_ms: 100}\n"), filepath.Join(specDir, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "runs", "clusters")
	if _, err := experiments.Run(context.Background(), spec, experiments.Options{Out: out, Parallel: 2}); err != nil {
		t.Fatal(err)
	}
	res, err := experiments.ReadResults(out)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{} // cluster/router -> label
	for _, p := range res.Policies {
		labels[p.Cluster+"/"+p.Router] = p.Name()
	}
	twoKVEvents := policyDir(t, "pd.yaml", withTwoKVEvents(t, string(pd)))
	for _, tc := range []struct {
		key              string
		replicas, prefil int32 // prefill 0: no spec.prefill
		err              string
		dir              string // --policy-dir; "": the spec's
	}{
		{"colo/least-request", 3, 0, "", ""},
		{"colo/pd.yaml", 3, 0, "", ""},
		{"split/pd.yaml", 2, 1, "", ""},
		{"split/least-request", 0, 0, "ran disaggregated", ""},
		// pd.yaml changed since the run into a P/D file the router refuses: that is the error,
		// not that the router is not P/D.
		{"split/pd.yaml", 0, 0, filepath.Join(twoKVEvents, "pd.yaml") + ": " + twoKVEventsErr, twoKVEvents},
		{"colo/pd.yaml", 0, 0, filepath.Join(twoKVEvents, "pd.yaml") + ": " + twoKVEventsErr, twoKVEvents},
	} {
		name, opts := tc.key, ServiceOptions{ModelURI: "pvc://models/llama/8b", Dir: specDir}
		if tc.dir != "" {
			name, opts.Dir = name+" from --policy-dir", tc.dir
		}
		t.Run(name, func(t *testing.T) {
			label, ok := labels[tc.key]
			if !ok {
				t.Fatalf("no cell %s among %v", tc.key, labels)
			}
			c, err := Choose(out, ChooseOptions{Policy: label})
			if err != nil {
				t.Fatal(err)
			}
			svc, err := Service(c, opts)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Service = %v, want an error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := *svc.Spec.Replicas; got != tc.replicas {
				t.Errorf("replicas %d, want %d", got, tc.replicas)
			}
			switch {
			case tc.prefil == 0 && svc.Spec.Prefill != nil:
				t.Errorf("spec.prefill %+v, want none", svc.Spec.Prefill)
			case tc.prefil > 0 && (svc.Spec.Prefill == nil || *svc.Spec.Prefill.Replicas != tc.prefil):
				t.Errorf("spec.prefill %+v, want %d replicas", svc.Spec.Prefill, tc.prefil)
			}
		})
	}
}
