package route

import (
	"os"
	"testing"
)

// exercise routes a few requests through a policy that parsed, which must then behave.
func exercise(t *testing.T, p Policy) {
	t.Helper()
	views := loadViews(3, 0, 1)
	views[1].Cache = setCache{}
	for k := range 5 {
		h := prompt(uint64(k%2), uint64(k), 3, 6)
		if got := p.Route(request(h), views); got < 0 || got >= len(views) {
			t.Fatalf("Route = %d with %d views", got, len(views))
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		"round-robin", "random", "least-request", "least-kv", "power-of-two",
		"prefix-affinity", "prefix-affinity:lru_capacity=4,max_prefix_blocks=2,load_guard=3",
		"weighted", "weighted:prefix=3,queue=1,kv=1", "weighted:load=1,active=2,precise-prefix=0.5,load_threshold=3",
		"weighted:picker=weighted-random-picker,lru_capacity=1", "weighted:prefix=-1", "weighted:kv=",
		"", ":", "weighted:,", "x:y=1,y=2", "weighted:prefix=1e308,queue=1e308",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		if isYAMLPath(spec) {
			return // file names are not the parser's input
		}
		p, err := Parse(spec, testEnv)
		if err != nil {
			return
		}
		exercise(t, p)
	})
}

func FuzzLoadEndpointPickerConfig(f *testing.F) {
	for _, file := range []string{"testdata/llm-d-default.yaml", "testdata/all-scorers.yaml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	const head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
	for _, s := range []string{
		head + "plugins:\n- type: queue-scorer\n",
		head + "plugins:\n- type: prefix-cache-scorer\n  parameters: {autoTune: false, blockSizeTokens: 32, maxPrefixTokensToMatch: 64}\n",
		head + "plugins: [{type: random-picker}, {type: load-aware-scorer, parameters: {threshold: 1}}]\n",
		head + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer, weight: 1e308}]}]\n",
		head + "plugins: [{type: x}]\n",
		"{}", "[]", "plugins: 3", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := LoadEndpointPickerConfig(data, testEnv)
		if err != nil {
			return
		}
		exercise(t, p)
	})
}
