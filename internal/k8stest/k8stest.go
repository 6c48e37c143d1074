// Package k8stest starts a real kube-apiserver with etcd on loopback for tests
// (controller-runtime's envtest, on the binaries hack/k8s builds), with servelab's CRDs
// installed, and gives a client for it.
package k8stest

import (
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"

	"servelab/api/v1alpha1"
	"servelab/internal/kubebin"
)

// Env is a running API server.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *k8sruntime.Scheme
}

// Options adjust the API server a test starts.
type Options struct {
	// ExtraCRDs are further CRD YAML files or directories to install (e.g. GIE's).
	ExtraCRDs []string
	// ServiceCIDR, when set, is kube-apiserver's --service-cluster-ip-range (envtest's
	// default is 10.0.0.0/24); 127.1.0.0/16 gives ClusterIPs that route to lo.
	ServiceCIDR string
}

// Start starts etcd and kube-apiserver on loopback, installs config/crd/bases (and
// opts.ExtraCRDs), and stops them when the test ends. Without the binaries the test is
// skipped, except under CI, where it fails (kubebin.ForTest).
func Start(t testing.TB, opts ...Options) *Env {
	t.Helper()
	bin := kubebin.ForTest(t)
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	scheme := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: bin,
		CRDDirectoryPaths:     append([]string{filepath.Join(RepoRoot(t), "config", "crd", "bases")}, o.ExtraCRDs...),
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
		// A loaded 2-core machine starts the pair in ~5 s; leave room.
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	if o.ServiceCIDR != "" {
		env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", o.ServiceCIDR)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting etcd and kube-apiserver from %s: %v", bin, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the API server: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme}
}

// GVK is the LLMService's group, version and kind.
var GVK = schema.GroupVersionKind{Group: v1alpha1.GroupVersion.Group, Version: v1alpha1.GroupVersion.Version, Kind: "LLMService"}

// RepoRoot is the repository's root directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("k8stest: no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}
