package kubebin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDirPicksTheFirstCompleteDirectory(t *testing.T) {
	incomplete, complete := t.TempDir(), t.TempDir()
	write := func(dir, name string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(incomplete, Etcd, 0o755)
	write(incomplete, APIServer, 0o644) // not executable: does not count
	write(complete, Etcd, 0o755)
	write(complete, APIServer, 0o755)
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	t.Setenv(EnvDir, incomplete)
	t.Setenv("KUBEBUILDER_ASSETS", complete)
	got, err := Dir()
	if err != nil || got != complete {
		t.Fatalf("Dir() = %q, %v; want %q", got, err, complete)
	}
	_, err = Dir(Etcd, Scheduler)
	if err == nil || !strings.Contains(err.Error(), Scheduler) || !strings.Contains(err.Error(), "hack/k8s/build.sh") {
		t.Fatalf("Dir(etcd, kube-scheduler) error %v, want one naming the binary and how to build it", err)
	}
}
