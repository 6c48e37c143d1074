package v1alpha1_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	"servelab/internal/k8stest"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/route"
)

const crdFile = "config/crd/bases/servelab.io_llmservices.yaml"

// TestGeneratedFilesAreCurrent regenerates the CRD YAML and deepcopy functions with the
// pinned controller-gen (built into the cache by hack/tools/build.sh when absent) and fails
// when the committed files differ: run 'make generate' after changing the types.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	k8stest.CheckGenerated(t, []string{"object", "crd:crdVersions=v1", "paths=./api/..."}, map[string]string{
		crdFile:                                 "servelab.io_llmservices.yaml",
		"api/v1alpha1/zz_generated.deepcopy.go": "zz_generated.deepcopy.go",
	})
}

// TestPolicyNamePatternsListTheRegistries: the CRD refuses unknown policy names with a
// pattern listing the registries' names; a policy added to a registry must be added to
// the pattern (the +kubebuilder:validation:Pattern markers in llmservice_types.go).
func TestPolicyNamePatternsListTheRegistries(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(k8stest.RepoRoot(t), crdFile))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(data, &crd); err != nil {
		t.Fatal(err)
	}
	spec := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"]
	for _, tc := range []struct {
		field   string
		pattern string
		names   []string
	}{
		{"spec.router.policy", spec.Properties["router"].Properties["policy"].Pattern, route.Registry.Names()},
		{"spec.batch", spec.Properties["batch"].Pattern, batch.Registry.Names()},
		{"spec.evict", spec.Properties["evict"].Pattern, evict.Registry.Names()},
	} {
		alternatives := regexp.MustCompile(`^\^\(([^)]*)\)`).FindStringSubmatch(tc.pattern)
		if alternatives == nil {
			t.Errorf("%s: pattern %q does not start with ^(name|name|...)", tc.field, tc.pattern)
			continue
		}
		listed := strings.Split(alternatives[1], "|")
		slices.Sort(listed)
		if diff := cmp.Diff(tc.names, listed); diff != "" {
			t.Errorf("%s: the pattern's names differ from the registry's (-registry +pattern):\n%s", tc.field, diff)
		}
		re := regexp.MustCompile(tc.pattern)
		for _, n := range tc.names {
			for _, ok := range []string{n, n + ":a=1,b=2"} {
				if !re.MatchString(ok) {
					t.Errorf("%s: %q does not match %q", tc.field, ok, tc.pattern)
				}
			}
		}
		for _, bad := range []string{"no-such-policy", "x" + tc.names[0], tc.names[0] + "x", tc.names[0] + ": a=1", ""} {
			if re.MatchString(bad) {
				t.Errorf("%s: %q matches %q", tc.field, bad, tc.pattern)
			}
		}
	}
}
