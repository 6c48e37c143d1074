package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"servelab/api/v1alpha1"
)

// 'servelab deploy -o yaml' prints the LLMService of the experiment's winner, as 'kubectl
// apply -f' takes it; bad flags are refused naming the flag.
func TestDeployPrintsTheWinner(t *testing.T) {
	trace, err := filepath.Abs(azureSlice)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec := filepath.Join(dir, "spec.yaml")
	if err := os.WriteFile(spec, []byte("name: pick\nworkload: {trace: "+trace+", max_requests: 80, rate_scale: 8}\n"+
		"cluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\npolicies: {routers: [round-robin, least-request]}\n"+
		"slo: {ttft_ms: 300}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "runs", "pick")
	if msg, err := run(t, "run", spec, "--out", out, "--report=false", "-q"); err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	printed, err := run(t, "deploy", "--from", out, "--pick", "best", "--model-uri", "pvc://models/llama", "-n", "llm", "-o", "yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, printed)
	}
	// The log lines go to stderr, here the same buffer: the YAML starts at apiVersion.
	i := strings.Index(printed, "apiVersion:")
	if i < 0 || !strings.Contains(printed[:i], `experiment pick: deploying "`) {
		t.Fatalf("output:\n%s", printed)
	}
	var svc v1alpha1.LLMService
	if err := yaml.UnmarshalStrict([]byte(printed[i:]), &svc); err != nil {
		t.Fatalf("%v\n%s", err, printed[i:])
	}
	if svc.Name != "pick" || svc.Namespace != "llm" || *svc.Spec.Replicas != 2 || svc.Spec.Source.Experiment != "pick" ||
		svc.Spec.Model.URI != "pvc://models/llama" || svc.Spec.Router.Policy == "" {
		t.Errorf("printed %+v", svc)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pick", "worst"}, "--pick: only 'best'"},
		{[]string{"--pick", "best", "--dry-run=later"}, `--dry-run "later": want none, client or server`},
		{[]string{"--pick", "best", "-o", "json"}, `-o "json": only yaml`},
		{[]string{"--policy", "round-robin / lru", "--replicas", "-2", "-o", "yaml"}, "--replicas: must not be negative"},
		{[]string{"--pick", "best", "--timeout", "0"}, "--timeout: must be positive"},
	} {
		msg, err := run(t, append([]string{"deploy", "--from", out, "--model-uri", "file:///m"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q\n%s", tc.args, err, tc.want, msg)
		}
	}
	if _, err := run(t, "deploy", "--pick", "best"); err == nil || !strings.Contains(err.Error(), "--from: required") {
		t.Errorf("no --from: %v", err)
	}
}
