package route

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
)

// TestEPPConfigMatchesCompactSpec: each sample EndpointPickerConfig scores and decides
// exactly as the compact spec it documents, request by request, over a long changing
// workload.
func TestEPPConfigMatchesCompactSpec(t *testing.T) {
	tests := []struct{ file, spec string }{
		{"testdata/llm-d-default.yaml", "weighted:prefix=3,queue=2,kv=2"},
		{"testdata/all-scorers.yaml",
			"weighted:prefix=2,queue=1,kv=1.5,load=1,active=0.5,precise-prefix=4,lru_capacity=64,max_prefix_blocks=32,load_threshold=16"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			for _, seed := range []uint64{1, 2} {
				env := policies.Env{Seed: seed, BlockSize: 16}
				fromFile := mustParse(t, tc.file, env).(*Weighted)
				fromSpec := mustParse(t, tc.spec, env).(*Weighted)
				c := newTestCluster(8, seed)
				for k := range 2000 {
					req := c.next(k)
					a, b := fromSpec.Route(req, c.views), fromFile.Route(req, c.views)
					if diff := cmp.Diff(fromSpec.total, fromFile.total); diff != "" {
						t.Fatalf("seed %d request %d: totals differ (-spec +file):\n%s", seed, k, diff)
					}
					if a != b {
						t.Fatalf("seed %d request %d: spec routes to %d, file to %d", seed, k, a, b)
					}
					c.apply(req, a)
				}
			}
		})
	}
}

func TestEPPConfigStructure(t *testing.T) {
	load := func(t *testing.T, text string) *Weighted {
		t.Helper()
		p, err := LoadEndpointPickerConfig([]byte(text), testEnv)
		if err != nil {
			t.Fatal(err)
		}
		return p.(*Weighted)
	}
	const head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
	t.Run("no profile takes every scorer at weight 1", func(t *testing.T) {
		w := load(t, head+"plugins:\n- type: queue-scorer\n- type: load-aware-scorer\n- type: single-profile-handler\n")
		want := "weighted[1*queue-scorer + 1*load-aware-scorer; max-score-picker]"
		if got := w.String(); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	})
	t.Run("named plugins and a picker", func(t *testing.T) {
		w := load(t, head+`plugins:
- {type: queue-scorer, name: q}
- {type: random-picker, name: pick}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: q, weight: 2.5}
  - {pluginRef: pick}
`)
		want := "weighted[2.5*q; random-picker]"
		if got := w.String(); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	})
	t.Run("two prefix scorers keep separate indexes", func(t *testing.T) {
		w := load(t, head+`plugins:
- {type: prefix-cache-scorer, name: gpu}
- {type: prefix-cache-scorer, name: cpu, parameters: {lruCapacityPerServer: 41000}}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: gpu, weight: 2}, {pluginRef: cpu}]
`)
		if got := w.String(); got != "weighted[1*cpu + 2*gpu; max-score-picker]" {
			t.Fatalf("got %s", got)
		}
		cpu, gpu := w.scorers[0].scorer.(*prefixCacheScorer), w.scorers[1].scorer.(*prefixCacheScorer)
		if cpu.index == gpu.index || cpu.index.capacity != 41000 || gpu.index.capacity != DefaultLRUCapacityPerServer {
			t.Errorf("indexes: cpu %+v, gpu %+v", *cpu.index, *gpu.index)
		}
	})
	t.Run("weight 0 leaves a scorer out", func(t *testing.T) {
		w := load(t, head+"plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}]\n"+
			"schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer, weight: 0}, {pluginRef: kv-cache-utilization-scorer}]}]\n")
		if got := w.String(); got != "weighted[1*kv-cache-utilization-scorer; max-score-picker]" {
			t.Errorf("got %s", got)
		}
	})
}

// TestEPPBlockSizes checks how prefix-cache-scorer block sizes map onto engine blocks.
func TestEPPBlockSizes(t *testing.T) {
	tests := []struct {
		params     string
		stride     int
		maxBlocks  int
		errorField string
	}{
		{"{}", 1, 256, ""},
		{"{blockSizeTokens: 48}", 1, 256, ""}, // autoTune: the engine's block wins, as in GIE
		{"{hashBlockSize: 5}", 1, 256, ""},    // llm-d's P/D examples; autoTune again
		{"{autoTune: false, blockSizeTokens: 48}", 3, 256, ""},
		{"{autoTune: false, blockSizeTokens: 16, maxPrefixBlocksToMatch: 8}", 1, 8, ""},
		{"{autoTune: false, hashBlockSize: 128}", 2, 256, ""}, // 128 characters = 32 tokens
		{"{autoTune: false, blockSize: 64, maxPrefixTokensToMatch: 1000}", 1, 62, ""},
		{"{autoTune: false, blockSizeTokens: 64, maxPrefixTokensToMatch: 1000}", 4, 15, ""},
		{"{autoTune: false, blockSizeTokens: 24}", 0, 0, "blockSizeTokens"},
		{"{autoTune: false, hashBlockSize: 5}", 0, 0, "hashBlockSize"},
		{"{autoTune: false, blockSize: 66}", 0, 0, "blockSize"},
		{"{blockSizeTokens: 0}", 0, 0, "blockSizeTokens"},
		{"{maxPrefixBlocksToMatch: 0}", 0, 0, "maxPrefixBlocksToMatch"},
		{"{maxPrefixTokensToMatch: 10}", 0, 0, "maxPrefixTokensToMatch"},
		{"{lruCapacityPerServer: -5}", 0, 0, "lruCapacityPerServer"},
		{"{lruCapacity: 5}", 0, 0, "lruCapacity"},
	}
	for _, tc := range tests {
		t.Run(tc.params, func(t *testing.T) {
			text := "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n" +
				"plugins:\n- type: prefix-cache-scorer\n  parameters: " + tc.params + "\n"
			p, err := LoadEndpointPickerConfig([]byte(text), testEnv)
			if tc.errorField != "" {
				if err == nil || !strings.Contains(err.Error(), "plugins[0].parameters") || !strings.Contains(err.Error(), tc.errorField) {
					t.Fatalf("error %v, want one naming plugins[0].parameters and %s", err, tc.errorField)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			x := p.(*Weighted).scorers[0].scorer.(*prefixCacheScorer).index
			if x.stride != tc.stride || x.maxBlocks != tc.maxBlocks {
				t.Errorf("stride %d, max blocks %d; want %d, %d", x.stride, x.maxBlocks, tc.stride, tc.maxBlocks)
			}
		})
	}
}

func TestEPPConfigErrorsNameTheField(t *testing.T) {
	const head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
	const queue = "plugins:\n- type: queue-scorer\n"
	tests := []struct{ name, text, field string }{
		{"not yaml", "plugins: [", "EndpointPickerConfig"},
		{"api version", "apiVersion: v2\nkind: EndpointPickerConfig\n" + queue, "apiVersion"},
		{"missing kind", "apiVersion: inference.networking.x-k8s.io/v1alpha1\n" + queue, "kind"},
		{"unknown top-level field", head + queue + "saturationDetector: {queueDepthThreshold: 5}\n", "saturationDetector"},
		{"no plugins", head, "plugins"},
		{"unknown plugin type", head + "plugins:\n- type: queue-scorer\n- type: lora-affinity-scorer\n", "plugins[1].type"},
		{"filter", head + "plugins:\n- type: decode-filter\n", "plugins[0].type"},
		{"missing type", head + "plugins:\n- name: x\n", "plugins[0].type"},
		{"unknown plugin field", head + "plugins:\n- type: queue-scorer\n  weight: 2\n", "weight"},
		{"duplicate name", head + "plugins:\n- type: queue-scorer\n- type: queue-scorer\n", "plugins[1].name"},
		{"params on queue-scorer", head + "plugins:\n- type: queue-scorer\n  parameters: {x: 1}\n", "plugins[0].parameters"},
		{"bad threshold", head + "plugins:\n- type: load-aware-scorer\n  parameters: {threshold: 0}\n", "plugins[0].parameters.threshold"},
		{"threshold not a number", head + "plugins:\n- type: load-aware-scorer\n  parameters: {threshold: many}\n", "plugins[0].parameters"},
		{"bad request timeout", head + "plugins:\n- type: active-request-scorer\n  parameters: {requestTimeout: soon}\n", "requestTimeout"},
		{"precise block size", head + "plugins:\n- type: precise-prefix-cache-scorer\n  parameters: {tokenProcessorConfig: {blockSize: 64}}\n",
			"plugins[0].parameters.tokenProcessorConfig.blockSize"},
		{"picker of several", head + "plugins:\n- type: max-score-picker\n  parameters: {maxNumOfEndpoints: 2}\n", "maxNumOfEndpoints"},
		{"two profiles", head + queue + "schedulingProfiles:\n- {name: prefill, plugins: [{pluginRef: queue-scorer}]}\n- {name: decode, plugins: [{pluginRef: queue-scorer}]}\n",
			"schedulingProfiles"},
		{"dangling ref", head + queue + "schedulingProfiles:\n- {name: d, plugins: [{pluginRef: kv}]}\n", "schedulingProfiles[0].plugins[0].pluginRef"},
		{"empty ref", head + queue + "schedulingProfiles:\n- {name: d, plugins: [{weight: 1}]}\n", "schedulingProfiles[0].plugins[0].pluginRef"},
		{"ref twice", head + queue + "schedulingProfiles:\n- {name: d, plugins: [{pluginRef: queue-scorer}, {pluginRef: queue-scorer}]}\n",
			"schedulingProfiles[0].plugins[1].pluginRef"},
		{"negative weight", head + queue + "schedulingProfiles:\n- {name: d, plugins: [{pluginRef: queue-scorer, weight: -1}]}\n",
			"schedulingProfiles[0].plugins[0].weight"},
		{"weight not a number", head + queue + "schedulingProfiles:\n- {name: d, plugins: [{pluginRef: queue-scorer, weight: heavy}]}\n", "weight"},
		// YAML infinities fail the YAML-to-JSON conversion, which names the value only.
		{"infinite weight", head + queue + "schedulingProfiles:\n- {name: d, plugins: [{pluginRef: queue-scorer, weight: .inf}]}\n", "+Inf"},
		{"weight on a picker", head + "plugins: [{type: max-score-picker}]\nschedulingProfiles:\n- {name: d, plugins: [{pluginRef: max-score-picker, weight: 2}]}\n",
			"schedulingProfiles[0].plugins[0].weight"},
		{"two pickers", head + "plugins: [{type: max-score-picker}, {type: random-picker}]\n", "schedulingProfiles[0].plugins[1].pluginRef"},
		{"handler in a profile", head + "plugins: [{type: single-profile-handler}]\nschedulingProfiles:\n- {name: d, plugins: [{pluginRef: single-profile-handler}]}\n",
			"schedulingProfiles[0].plugins[0].pluginRef"},
		{"unknown profile field", head + queue + "schedulingProfiles:\n- {name: d, filters: [], plugins: [{pluginRef: queue-scorer}]}\n", "filters"},
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

func TestParseFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name, path, want string
	}{
		{"spec mapping", write("spec.yaml", "name: weighted\nparams: {prefix: 1, queue: 0, kv: 0}\n"),
			"weighted[1*prefix-cache-scorer; max-score-picker]"},
		{"compact spec", write("compact.yml", "weighted:queue=4,prefix=0,kv=0\n"), "weighted[4*queue-scorer; max-score-picker]"},
		{"endpoint picker config", "testdata/llm-d-default.yaml",
			"weighted[3*prefix-cache-scorer + 2*queue-scorer + 2*kv-cache-utilization-scorer; max-score-picker]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.path, testEnv)
			if got := p.(*Weighted).String(); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
	if _, err := Parse(filepath.Join(dir, "missing.yaml"), testEnv); err == nil {
		t.Error("Parse of a missing file succeeded")
	}
	bad := write("bad.yaml", "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: nope}]\n")
	if _, err := Parse(bad, testEnv); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "plugins[0].type") {
		t.Errorf("Parse(bad) = %v, want an error naming the file and plugins[0].type", err)
	}
	if _, err := LoadEndpointPickerConfigFile(bad, testEnv); err == nil || !strings.Contains(err.Error(), "plugins[0].type") {
		t.Errorf("LoadEndpointPickerConfigFile(bad) = %v, want an error naming plugins[0].type", err)
	}
	if _, err := LoadEndpointPickerConfigFile("testdata/all-scorers.yaml", testEnv); err != nil {
		t.Error(err)
	}
}
