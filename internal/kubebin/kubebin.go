// Package kubebin finds the Kubernetes control-plane binaries (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) that hack/k8s/build.sh builds from Go modules
// into a cache outside the repository. The API tests, the controller's tests and
// 'servelab cluster up' all run these, at one release.
package kubebin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Version is the Kubernetes release hack/k8s builds; the project's k8s.io modules are at
// the matching v0.x release.
const Version = "v1.37.2"

// Names of the binaries, as envtest (KUBEBUILDER_ASSETS) names them too.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
)

// EnvDir overrides where the binaries are; KUBEBUILDER_ASSETS (envtest's variable) is
// read after it.
const EnvDir = "SERVELAB_K8S_BIN"

// BuildHint says how to get the binaries.
const BuildHint = "run hack/k8s/build.sh (a cold build takes 10-20 minutes) or set " + EnvDir + " to a directory holding them"

// CacheDir is where hack/k8s/build.sh puts the binaries by default.
func CacheDir() string {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "servelab", "k8s-"+Version)
}

// Dir returns the first directory, of $SERVELAB_K8S_BIN, $KUBEBUILDER_ASSETS and
// CacheDir, that holds every named binary as an executable file.
func Dir(names ...string) (string, error) {
	if len(names) == 0 {
		names = []string{Etcd, APIServer}
	}
	var tried []string
	for _, dir := range []string{os.Getenv(EnvDir), os.Getenv("KUBEBUILDER_ASSETS"), CacheDir()} {
		if dir == "" {
			continue
		}
		tried = append(tried, dir)
		if missing := missingIn(dir, names); len(missing) == 0 {
			return dir, nil
		}
	}
	if len(tried) == 0 {
		return "", errors.New("kubebin: no directory to look in: " + BuildHint)
	}
	return "", fmt.Errorf("kubebin: %s not found in %s: %s", strings.Join(names, ", "), strings.Join(tried, ", "), BuildHint)
}

func missingIn(dir string, names []string) []string {
	var missing []string
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, n)
		}
	}
	return missing
}
