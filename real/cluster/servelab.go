package cluster

import (
	"context"
	"fmt"
	"slices"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"servelab/config"
)

// ControllerComponent is the name (log, pid file) of the LLMService controller `up` runs.
const ControllerComponent = "controller"

// installCRDs creates (or updates) servelab's CRDs in the cluster of dir and waits until
// the API server serves them.
func installCRDs(ctx context.Context, dir string) ([]string, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfigPath(dir))
	if err != nil {
		return nil, err
	}
	cs, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	files, err := config.CRDs()
	if err != nil {
		return nil, err
	}
	var names []string
	for file, data := range files {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict(data, &crd); err != nil {
			return nil, fmt.Errorf("config/%s: %w", file, err)
		}
		api := cs.ApiextensionsV1().CustomResourceDefinitions()
		old, err := api.Get(ctx, crd.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = api.Create(ctx, &crd, metav1.CreateOptions{})
		case err == nil:
			crd.ResourceVersion = old.ResourceVersion
			_, err = api.Update(ctx, &crd, metav1.UpdateOptions{})
		}
		if err != nil {
			return nil, fmt.Errorf("installing CRD %s: %w", crd.Name, err)
		}
		names = append(names, crd.Name)
	}
	slices.Sort(names)
	for _, name := range names {
		for {
			crd, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(crd) {
				break
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("CRD %s not established: %w", name, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return names, nil
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}

// controllerArgs runs 'servelab controller' on the cluster's admin kubeconfig, on every
// namespace, with its metrics and probe listeners off (ports of this machine are shared
// with the pods; its log is the component's).
func controllerArgs(dir string) []string {
	return []string{"controller", "--kubeconfig", kubeconfigPath(dir), "--metrics-bind-address", "0", "--health-probe-bind-address", "0"}
}
