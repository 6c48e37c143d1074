package kubebin

import (
	"os"
	"testing"
)

// ForTest returns the directory holding the named binaries (etcd and kube-apiserver when
// none are named). Without them the test is skipped, for a quick local loop, except when
// CI is set: CI always runs the API tests, so there it fails.
func ForTest(t testing.TB, names ...string) string {
	t.Helper()
	dir, err := Dir(names...)
	if err == nil {
		return dir
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set and the Kubernetes binaries are missing: %v", err)
	}
	t.Skipf("skipped without the Kubernetes binaries (CI fails instead): %v", err)
	return ""
}
