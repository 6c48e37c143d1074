package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LLMService serves one model: a pool of servelab engines (and optionally a second pool for
// prefill), behind servelab's router, which picks an engine per request with a routing
// policy; the engines batch and evict KV blocks with the policies named here. It is shaped
// after KServe's LLMInferenceService (spec.model, replicas, template, prefill, router).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 56 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be a DNS label that starts with a letter, at most 56 characters: the controller names the objects it creates NAME-engine, NAME-router, ... (Service names are DNS labels of at most 63)"
// +kubebuilder:resource:shortName=llmsvc,categories=servelab
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Engines",type=string,JSONPath=`.status.engines`
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.status.policy`
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.status.url`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type LLMService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   LLMServiceSpec   `json:"spec"`
	Status LLMServiceStatus `json:"status,omitempty"`
}

// LLMServiceList is a list of LLMServices.
//
// +kubebuilder:object:root=true
type LLMServiceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LLMService `json:"items"`
}

// LLMServiceSpec is the desired state of an LLMService.
type LLMServiceSpec struct {
	// Model is the model the engines serve.
	// +required
	Model ModelSpec `json:"model"`

	// The engine pool: every request's decode runs here (and its prefill too, unless
	// spec.prefill is set).
	WorkloadSpec `json:",inline"`

	// Prefill, when set, is a second engine pool for prompts' prefill (prefill/decode
	// disaggregation), shaped as the main pool.
	// +optional
	Prefill *WorkloadSpec `json:"prefill,omitempty"`

	// Router is servelab's router in front of the engines and its routing policy.
	// +optional
	// +kubebuilder:default={}
	Router RouterSpec `json:"router,omitempty"`

	// Batch is the engines' batch policy spec ('servelab engine --batch'), e.g. "vllm" or
	// "vllm:max_num_batched_tokens=512,max_num_seqs=64". Its name must be a batch policy;
	// its parameters are checked by the controller (condition PolicyApplied).
	// +optional
	// +kubebuilder:default=vllm
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^(priority|static|vllm)(:[^\s]*)?$`
	Batch string `json:"batch,omitempty"`

	// Evict is the engines' KV-cache eviction policy spec ('servelab engine --evict'), e.g. "lru".
	// +optional
	// +kubebuilder:default=lru
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^(fifo|lfu|lru|radix-lru|s3fifo)(:[^\s]*)?$`
	Evict string `json:"evict,omitempty"`

	// Autoscale, when set, is a scaling policy spec ('servelab up --autoscale', 'servelab
	// sim --autoscale'; policies/scale), e.g. "hpa:metric=queue,target=4,max-replicas=8" or
	// "kpa:metric=concurrency,target=8,max-scale=6": the controller then sets the engine
	// Deployment's replicas by the policy every interval, from the engines' /metrics, and
	// spec.replicas is ignored. Its min and max replicas are the policy's parameters
	// (min-replicas/max-replicas, kpa's min-scale/max-scale; KServe's minReplicas and
	// maxReplicas), so the simulator, 'servelab up' and the controller read one spec. Its name
	// must be a scaling policy; its parameters are checked by the controller (condition
	// PolicyApplied). Only the decode pool is scaled, not spec.prefill.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^(hpa|kpa)(:[^\s]*)?$`
	Autoscale string `json:"autoscale,omitempty"`

	// Source records which experiment and which of its policies this service deploys
	// ('servelab deploy' sets it); the controller copies it to status once deployed.
	// +optional
	Source *PolicySource `json:"source,omitempty"`
}

// ModelSpec says which model is served and where its weights are.
type ModelSpec struct {
	// Name is the model name clients send in requests (the engines' --served-model-name).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[^\s]+$`
	Name string `json:"name"`

	// URI is where the Hugging Face model directory (config.json, safetensors,
	// tokenizer.json) is: file:///PATH, a directory on the node (mounted as a hostPath;
	// on 'servelab cluster up' nodes, a directory of this machine), or pvc://CLAIM/PATH, a
	// directory in a PersistentVolumeClaim (KServe's storageUri scheme; mounted read-only).
	// +required
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:Pattern=`^(file:///|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/|$))[^\s]*$`
	URI string `json:"uri"`
}

// WorkloadSpec is one pool of engines.
type WorkloadSpec struct {
	// Replicas is the number of engines.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Replicas *int32 `json:"replicas,omitempty"`

	// Template is the engine container.
	// +optional
	// +kubebuilder:default={}
	Template EngineTemplate `json:"template,omitempty"`
}

// EngineTemplate is the container a pool's engines (or the router) run in.
//
// +kubebuilder:validation:XValidation:rule="!has(self.args) || self.args.all(a, !a.matches('^--(model|served-model-name|host|port|batch|evict|endpoints|router|role)(=|$)'))",message="args may not set --model, --served-model-name, --host, --port, --batch, --evict, --endpoints, --router or --role: the controller sets them from spec.model, spec.batch, spec.evict, spec.router and spec.prefill"
type EngineTemplate struct {
	// Image holds the servelab binary as its entrypoint (see the repository's Dockerfile).
	// +optional
	// +kubebuilder:default="servelab:latest"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Image string `json:"image,omitempty"`

	// ImagePullPolicy is the container's image pull policy.
	// +optional
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// Args are further flags of 'servelab engine' (or 'servelab router'), appended to those
	// the controller sets, e.g. ["--max-num-seqs=64", "--kv-cache-memory-bytes=4294967296"].
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=4096
	Args []string `json:"args,omitempty"`

	// Env are further environment variables of the container.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Env []corev1.EnvVar `json:"env,omitempty"`

	// Resources are the container's compute resources.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
}

// RouterSpec is the router in front of the engines.
//
// +kubebuilder:validation:XValidation:rule="(has(self.policy) ? 1 : 0) + (has(self.endpointPickerConfig) ? 1 : 0) + (has(self.endpointPickerConfigRef) ? 1 : 0) <= 1",message="set at most one of policy, endpointPickerConfig and endpointPickerConfigRef"
type RouterSpec struct {
	// Replicas is the number of router pods.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Replicas *int32 `json:"replicas,omitempty"`

	// Policy is a servelab routing policy spec ('servelab router --router'), e.g.
	// "least-request" or "weighted:prefix=3,queue=2,kv=2". Without it, and without an
	// EndpointPickerConfig, the router runs round-robin. Its name must be a routing policy;
	// its parameters are checked by the controller (condition PolicyApplied).
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^(least-kv|least-request|power-of-two|prefix-affinity|random|round-robin|weighted)(:[^\s]*)?$`
	Policy string `json:"policy,omitempty"`

	// EndpointPickerConfig is the routing policy as an llm-d / Gateway API Inference
	// Extension EndpointPickerConfig document (YAML), inline.
	// +optional
	// +kubebuilder:validation:MaxLength=262144
	EndpointPickerConfig string `json:"endpointPickerConfig,omitempty"`

	// EndpointPickerConfigRef names a key of a ConfigMap in the service's namespace that
	// holds an EndpointPickerConfig document.
	// +optional
	EndpointPickerConfigRef *corev1.ConfigMapKeySelector `json:"endpointPickerConfigRef,omitempty"`

	// ScrapeInterval is how often the router reads each engine's /metrics (llm-d's
	// default, 50ms).
	// +optional
	// +kubebuilder:default="50ms"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	ScrapeInterval *metav1.Duration `json:"scrapeInterval,omitempty"`

	// Template is the router's container; its image defaults to the engines'.
	// +optional
	Template *EngineTemplate `json:"template,omitempty"`
}

// PolicySource names the experiment and policy an LLMService deploys.
type PolicySource struct {
	// Experiment is the experiment's name (its spec's name).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Experiment string `json:"experiment,omitempty"`
	// Policy is the experiment's label of the deployed policy combination.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Policy string `json:"policy,omitempty"`
}

// Condition types of an LLMService.
const (
	// ConditionReady: the engines, the router and the policy are all in place and serving.
	ConditionReady = "Ready"
	// ConditionEnginesReady: every engine pool has all its replicas ready.
	ConditionEnginesReady = "EnginesReady"
	// ConditionRouterReady: the router has all its replicas ready.
	ConditionRouterReady = "RouterReady"
	// ConditionScalingActive: spec.autoscale is set and its policy decided the engines'
	// replicas from their metrics at the last interval (the HorizontalPodAutoscaler's
	// condition); False when the metrics could not be read (reason FailedGetMetrics).
	ConditionScalingActive = "ScalingActive"
	// ConditionPolicyApplied: the routing, batch and evict policies are valid and deployed;
	// False with a reason (InvalidPolicy, ConfigMapNotFound, ...) and a message naming the
	// field otherwise.
	ConditionPolicyApplied = "PolicyApplied"
)

// LLMServiceStatus is the observed state of an LLMService.
type LLMServiceStatus struct {
	// ObservedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, EnginesReady, RouterReady, PolicyApplied.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Replicas and ReadyReplicas count the engines of every pool.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// Engines is ReadyReplicas/Replicas, for kubectl get.
	// +optional
	Engines string `json:"engines,omitempty"`

	// RouterReadyReplicas counts the router's ready pods.
	// +optional
	RouterReadyReplicas int32 `json:"routerReadyReplicas,omitempty"`

	// URL is the router's OpenAI-compatible base URL inside the cluster.
	// +optional
	URL string `json:"url,omitempty"`

	// Policy is the deployed routing policy: its spec, or "EndpointPickerConfig".
	// +optional
	Policy string `json:"policy,omitempty"`

	// Source is the experiment and policy deployed (spec.source, once applied).
	// +optional
	Source *PolicySource `json:"source,omitempty"`

	// Autoscale is the autoscaler's last decision, when spec.autoscale is set.
	// +optional
	Autoscale *AutoscaleStatus `json:"autoscale,omitempty"`
}

// AutoscaleStatus is what spec.autoscale's policy last decided, after the
// HorizontalPodAutoscaler's status (desiredReplicas, currentMetrics, lastScaleTime).
type AutoscaleStatus struct {
	// DesiredReplicas is the engine Deployment's replicas the policy set.
	DesiredReplicas int32 `json:"desiredReplicas"`
	// Metric is the metric the policy read and its value per ready engine (or its mean),
	// e.g. "queue=6.5"; "queue=NaN" when no engine was ready.
	// +optional
	Metric string `json:"metric,omitempty"`
	// Reason is the policy's explanation of the last decision.
	// +optional
	Reason string `json:"reason,omitempty"`
	// LastDecisionTime is when the policy last decided.
	// +optional
	LastDecisionTime *metav1.Time `json:"lastDecisionTime,omitempty"`
	// LastScaleTime is when the policy last changed the replicas.
	// +optional
	LastScaleTime *metav1.Time `json:"lastScaleTime,omitempty"`
}
