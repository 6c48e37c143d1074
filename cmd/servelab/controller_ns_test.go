package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestKubeconfigNamespace: a controller with --leader-elect and no service-account mount
// (a pod of the local cluster's node, a laptop) puts its Lease in the kubeconfig context's
// namespace, "default" when the context names none.
func TestKubeconfigNamespace(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts:
- {name: team, context: {cluster: c, user: u, namespace: team-a}}
- {name: plain, context: {cluster: c, user: u}}
current-context: team
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", kc)
	for _, tc := range []struct{ context, want string }{{"", "team-a"}, {"team", "team-a"}, {"plain", "default"}} {
		got, err := kubeconfigNamespace(tc.context)
		if err != nil || got != tc.want {
			t.Errorf("context %q: %q, %v; want %q", tc.context, got, err, tc.want)
		}
	}
}
