// Package config holds servelab's Kubernetes manifests in kubebuilder's kustomize layout
// (crd, rbac, manager, default, samples) and embeds the CRDs, which 'servelab cluster up'
// installs.
package config

import (
	"embed"
	"io/fs"
)

//go:embed crd/bases/*.yaml
var crds embed.FS

// CRDs returns the CustomResourceDefinition YAML files of config/crd/bases, by name.
func CRDs() (map[string][]byte, error) {
	names, err := fs.Glob(crds, "crd/bases/*.yaml")
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(names))
	for _, n := range names {
		b, err := crds.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out[n] = b
	}
	return out, nil
}
