package route

import (
	"fmt"
	"os"
	"strings"

	"sigs.k8s.io/yaml"

	"servelab/policies"
)

// This file is the only one in the package that does I/O: reading a policy file happens
// once, when a policy is built, never while it decides.

// Parse builds a routing policy from a compact spec ("weighted:prefix=3,queue=1,kv=1") or
// from a YAML file named by a path ending in .yaml or .yml. A file whose top level has an
// apiVersion or kind is an llm-d / GIE EndpointPickerConfig; any other file is a policy
// spec in YAML ({name: ..., params: {...}}, see policies.ParseYAMLSpec).
func Parse(spec string, env policies.Env) (Policy, error) {
	spec = strings.TrimSpace(spec)
	if isYAMLPath(spec) {
		data, err := os.ReadFile(spec)
		if err != nil {
			return nil, fmt.Errorf("route policy file: %w", err)
		}
		pol, err := parseYAML(data, env)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", spec, err)
		}
		return pol, nil
	}
	pol, _, err := Registry.Parse(spec, env)
	return pol, err
}

// LoadEndpointPickerConfigFile reads an EndpointPickerConfig file and builds its policy
// (see LoadEndpointPickerConfig).
func LoadEndpointPickerConfigFile(path string, env policies.Env) (Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("EndpointPickerConfig: %w", err)
	}
	pol, err := LoadEndpointPickerConfig(data, env)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pol, nil
}

func isYAMLPath(spec string) bool {
	lower := strings.ToLower(spec)
	return strings.HasSuffix(lower, ".yaml") || strings.HasSuffix(lower, ".yml")
}

// parseYAML tells an EndpointPickerConfig from a policy spec by its type fields.
func parseYAML(data []byte, env policies.Env) (Policy, error) {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	// Non-strict: only the two fields matter here; the loaders below are strict.
	if err := yaml.Unmarshal(data, &head); err == nil && (head.APIVersion != "" || head.Kind != "") {
		return LoadEndpointPickerConfig(data, env)
	}
	spec, err := policies.ParseYAMLSpec(data)
	if err != nil {
		return nil, err
	}
	return Registry.Build(spec, env)
}
