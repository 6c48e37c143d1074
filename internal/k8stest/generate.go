package k8stest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// CheckGenerated runs the pinned controller-gen (hack/tools/build.sh builds it into the
// cache when absent) from the repository's root with args plus an output directory of its
// own, and fails the test for each committed file (a path from the root) that differs from
// what controller-gen wrote under the generated name: 'make generate' was not run after a
// change to what it reads (the types, the +kubebuilder markers).
func CheckGenerated(t *testing.T, args []string, committedToGenerated map[string]string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds controller-gen when it is not cached")
	}
	root := RepoRoot(t)
	out, err := exec.Command("bash", filepath.Join(root, "hack", "tools", "build.sh")).Output()
	if err != nil {
		t.Fatalf("hack/tools/build.sh: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command(strings.TrimSpace(string(out)), append(args, "output:dir="+dir)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for committed, generated := range committedToGenerated {
		want, err := os.ReadFile(filepath.Join(dir, generated))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, committed))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(string(want), string(got)); diff != "" {
			t.Errorf("%s is not what controller-gen generates; run 'make generate' (-generated +committed):\n%s", committed, diff)
		}
	}
}
