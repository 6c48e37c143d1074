package discovery

import (
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// TestKubeconfigNamespace: the pool's namespace without --pool-namespace is $NAMESPACE
// (GIE's), else the kubeconfig context's, else default; the file named is the one read.
func TestKubeconfigNamespace(t *testing.T) {
	write := func(ns string) string {
		kc := clientcmdapi.NewConfig()
		kc.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:6443"}
		kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
		kc.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u", Namespace: ns}
		kc.CurrentContext = "x"
		path := filepath.Join(t.TempDir(), "kubeconfig")
		if err := clientcmd.WriteToFile(*kc, path); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name, contextNS, env, want string
	}{
		{"the context's", "engines", "", "engines"},
		{"$NAMESPACE first", "engines", "from-env", "from-env"},
		{"default", "", "", "default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NAMESPACE", tc.env)
			t.Setenv("KUBECONFIG", "")
			cfg, ns, err := Kubeconfig(write(tc.contextNS))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Host != "https://127.0.0.1:6443" || ns != tc.want {
				t.Errorf("host %q, namespace %q; want https://127.0.0.1:6443, %q", cfg.Host, ns, tc.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, _, err := Kubeconfig("/nonexistent/kubeconfig")
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/kubeconfig") {
			t.Errorf("a missing kubeconfig: %v", err)
		}
	})
}
