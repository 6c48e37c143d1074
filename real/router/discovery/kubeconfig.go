package discovery

import (
	"fmt"
	"os"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Kubeconfig loads the Kubernetes client configuration as kubectl finds it: the file given
// (--kubeconfig), else the files in $KUBECONFIG, else ~/.kube/config, else, in a pod, its
// service account's in-cluster configuration. It also returns the namespace a pool
// without --pool-namespace lives in: $NAMESPACE (GIE's resolution, which a manifest sets
// from the Downward API, docs/pool-namespace-behavior.md), else the kubeconfig context's
// namespace or, in a pod, its own (clientcmd), else "default".
func Kubeconfig(path string) (*rest.Config, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	cfg, err := cc.ClientConfig()
	if err != nil {
		where := "$KUBECONFIG, ~/.kube/config or a pod's service account"
		if path != "" {
			where = path
		}
		return nil, "", fmt.Errorf("kubeconfig from %s: %w", where, err)
	}
	ns := os.Getenv("NAMESPACE")
	if ns == "" {
		if ns, _, err = cc.Namespace(); err != nil {
			return nil, "", fmt.Errorf("kubeconfig namespace: %w", err)
		}
	}
	if ns == "" {
		ns = "default"
	}
	return cfg, ns, nil
}
