// Package v1alpha1 is servelab's Kubernetes API (group servelab.io, version v1alpha1): the
// LLMService, shaped after KServe's LLMInferenceService, that runs a model's engines behind
// servelab's router with the routing, batching and eviction policies an experiment chose.
// The CRD YAML under config/crd/ and zz_generated.deepcopy.go are generated from these
// types by controller-gen ('make generate').
//
// +kubebuilder:object:generate=true
// +groupName=servelab.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API's group and version.
var GroupVersion = schema.GroupVersion{Group: "servelab.io", Version: "v1alpha1"}

var (
	// SchemeBuilder registers the API's types.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the API's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &LLMService{}, &LLMServiceList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
