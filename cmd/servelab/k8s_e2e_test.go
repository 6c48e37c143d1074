package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"

	"servelab/api/v1alpha1"
	"servelab/experiments"
	"servelab/experiments/report"
	"servelab/internal/kubebin"
	"servelab/metrics"
	"servelab/real/cluster"
)

// startLocalCluster runs 'servelab cluster up' in dir and, when the test ends, 'cluster
// down', checking that no process the cluster started (control plane, node, controller,
// pods: everything carrying its marker, seen during the test or after) survives.
func startLocalCluster(t *testing.T, dir, binDir string) {
	t.Helper()
	var seen []int
	t.Cleanup(func() {
		seen = append(seen, cluster.Processes(dir)...)
		if out, err := run(t, "cluster", "down", "--dir", dir); err != nil {
			t.Errorf("cluster down: %v\n%s", err, out)
		}
		seen = append(seen, cluster.Processes(dir)...)
		slices.Sort(seen)
		for _, pid := range slices.Compact(seen) {
			if cluster.Alive(pid) {
				t.Errorf("process %d of the cluster survived cluster down", pid)
			}
		}
	})
	if out, err := run(t, "cluster", "up", "--dir", dir, "--bin-dir", binDir); err != nil {
		t.Fatalf("cluster up: %v\n%s", err, out)
	}
	seen = append(seen, cluster.Processes(dir)...)
}

// TestDeployWinnerOnLocalCluster is a newcomer's path from the README, end to end on real
// processes: 'servelab cluster up' (control plane, process node, CRD and controller);
// 'servelab run' of experiments/examples/azure-routers.yaml in the simulator; 'servelab
// deploy --pick best' of its winner on the tiny model, which the controller turns into
// engine and router pods; 'servelab bench' through the router's Service; the deployed
// routing policy changed with 'servelab deploy --policy' while that load runs, without
// losing a request; and 'cluster down' with no process left.
func TestDeployWinnerOnLocalCluster(t *testing.T) {
	binDir := kubebin.ForTest(t, kubebin.Etcd, kubebin.APIServer, kubebin.ControllerManager, kubebin.Scheduler)
	t.Setenv("SERVELAB_RUN_MAIN", "1") // the node, the controller and the pods run this test binary as servelab
	model := synthTiny(t)
	dir := t.TempDir()
	t0 := time.Now()
	startLocalCluster(t, dir, binDir)
	t.Setenv("KUBECONFIG", cluster.KubeconfigPath(dir))
	t.Logf("cluster up: %.1f s", time.Since(t0).Seconds())

	runDir := filepath.Join(t.TempDir(), "azure-routers")
	if out, err := run(t, "run", "../../experiments/examples/azure-routers.yaml", "--max-requests", "300", "--out", runDir, "--report=false"); err != nil {
		t.Fatalf("servelab run: %v\n%s", err, out)
	}
	exp, err := report.Load(runDir)
	if err != nil {
		t.Fatal(err)
	}
	// The report ranks the policies; deploy --pick best takes the first.
	best := exp.Results.Policies[0]
	var other *experiments.PolicyResult
	for i, p := range exp.Results.Policies {
		if p.Router != best.Router {
			other = &exp.Results.Policies[i]
			break
		}
	}
	if other == nil {
		t.Fatalf("the experiment has no second router: %+v", exp.Results.Policies)
	}
	winner := best.Name()

	deploy := func(args ...string) string {
		t.Helper()
		out, err := run(t, append([]string{"deploy", "--from", runDir, "--model-uri", "file://" + model,
			"--replicas", "2", "--name", "winner", "--timeout", "3m"}, args...)...)
		if err != nil {
			t.Fatalf("servelab deploy %v: %v\n%s", args, err, out)
		}
		return out
	}
	t1 := time.Now()
	out := deploy("--pick", "best")
	t.Logf("deploy --pick best (%s): Ready in %.1f s", winner, time.Since(t1).Seconds())
	m := regexp.MustCompile(`from this machine[^\n]*: (http://\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("deploy printed no URL reachable from this machine:\n%s", out)
	}
	url := m[1]
	checkDeployed(t, best.Router, winner)

	// Load through the router's Service, and the policy changed under it.
	type benchResult struct {
		out string
		err error
	}
	done := make(chan benchResult, 1)
	const requests = 150
	go func() {
		out, err := run(t, "bench", "--endpoint", url, "--trace", mooncakeSlice, "--max-requests", "150",
			"--model", model, "--rate-scale", "2", "--json")
		done <- benchResult{out, err}
	}()
	waitRouted(t, strings.TrimSuffix(url, "/v1"), 10)
	t2 := time.Now()
	deploy("--policy", other.Name())
	t.Logf("deploy --policy %q under load: Ready in %.1f s", other.Name(), time.Since(t2).Seconds())
	checkDeployed(t, other.Router, other.Name())
	var res benchResult
	select {
	case res = <-done:
		t.Fatalf("the bench ended before the policy change was deployed: the change was not under load")
	default:
		res = <-done
	}
	if res.err != nil {
		t.Fatalf("bench through the router, across the policy change: %v\n%s", res.err, res.out)
	}
	var s metrics.Summary
	if err := json.Unmarshal([]byte(res.out[strings.Index(res.out, "{"):]), &s); err != nil {
		t.Fatalf("bench summary: %v\n%s", err, res.out)
	}
	if s.Completed != requests || s.Failed != 0 {
		t.Errorf("bench across the policy change: %d completed, %d failed of %d", s.Completed, s.Failed, requests)
	}
	t.Logf("bench: %d requests, %d failed, mean TTFT %.1f ms", s.Completed, s.Failed, s.MeanTTFTMs)
}

// checkDeployed: the LLMService named winner reports the routing policy and source label.
func checkDeployed(t *testing.T, policy, label string) {
	t.Helper()
	c := llmClient(t, "")
	var svc v1alpha1.LLMService
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: "default", Name: "winner"}, &svc); err != nil {
		t.Fatal(err)
	}
	if svc.Status.Policy != policy || svc.Status.Source == nil || svc.Status.Source.Policy != label {
		t.Errorf("status policy %q, source %+v; want %q from %q", svc.Status.Policy, svc.Status.Source, policy, label)
	}
}

// llmClient is a client of the cluster a kubeconfig names ("": as kubectl finds it), with
// the LLMService's types.
func llmClient(t testing.TB, kubeconfig string) client.Client {
	t.Helper()
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	scheme := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitRouted waits until the router behind base has routed at least n requests (its
// servelab_router_decisions_total), so that what follows happens under load.
func waitRouted(t *testing.T, base string, n float64) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^servelab_router_decisions_total\{[^}]*\} (\S+)$`)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(base + "/metrics"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var total float64
			for _, m := range re.FindAllStringSubmatch(string(body), -1) {
				var v float64
				if err := json.Unmarshal([]byte(m[1]), &v); err == nil {
					total += v
				}
			}
			if total >= n {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the router at %s routed fewer than %g requests within a minute", base, n)
}
