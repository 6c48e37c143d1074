package controller

import (
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"

	"servelab/api/v1alpha1"
	"servelab/policies/route"
)

// Ports of the pods the controller runs.
const (
	// EnginePort is every engine's OpenAI API, /health and /metrics (vLLM's default port).
	EnginePort = 8000
	// RouterPort is the router's OpenAI API, /health and /metrics.
	RouterPort = 8080
	// ExtProcPort is the router's Gateway API Inference Extension endpoint-picker protocol
	// (Envoy ext_proc over gRPC); 9002 is GIE's default endpoint-picker port.
	ExtProcPort = 9002
)

// Labels the controller puts on what it creates. The pods of a pool are selected by
// LabelService and LabelComponent; the other two are Kubernetes' recommended labels.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelInstance  = "app.kubernetes.io/instance"
	LabelComponent = "app.kubernetes.io/component"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelService   = "servelab.io/llmservice"

	// AnnotationRouterConfigHash is on the router's pod template: the SHA-256 of its routing
	// policy (the spec, or the EndpointPickerConfig document), so a policy change rolls the
	// router's pods.
	AnnotationRouterConfigHash = "servelab.io/router-config-hash"
)

// Components, the values of LabelComponent.
const (
	ComponentEngine  = "engine"
	ComponentPrefill = "prefill"
	ComponentRouter  = "router"
)

// FieldManager is the controller's server-side apply field manager.
const FieldManager = "servelab-controller"

// eppMountDir is where the router's EndpointPickerConfig ConfigMap is mounted; eppKey is
// its key there.
const (
	eppMountDir = "/etc/servelab/epp"
	eppKey      = "config.yaml"
)

// modelMountDir is where a pvc:// model is mounted, as KServe mounts its storageUri.
const modelMountDir = "/mnt/models"

// Names of the objects an LLMService owns.
func engineName(svc string) string  { return svc + "-engine" }
func prefillName(svc string) string { return svc + "-prefill" }
func routerName(svc string) string  { return svc + "-router" }

// RouterServiceName is the name of the Service in front of an LLMService's router (port
// RouterPort; status.url names it).
func RouterServiceName(svc string) string { return routerName(svc) }
func eppName(svc string) string           { return svc + "-epp" }

// InferencePoolGVK is GIE's InferencePool, created when its CRD is installed.
var InferencePoolGVK = schema.GroupVersionKind{Group: "inference.networking.k8s.io", Version: "v1", Kind: "InferencePool"}

// selectorLabels select the pods of one component of an LLMService (immutable in a
// Deployment, so only these two).
func selectorLabels(svc, component string) map[string]string {
	return map[string]string{LabelService: svc, LabelComponent: component}
}

func objectLabels(svc, component string) map[string]string {
	l := selectorLabels(svc, component)
	l[LabelName] = "servelab"
	l[LabelInstance] = svc
	l[LabelManagedBy] = FieldManager
	return l
}

// EngineSelector is the label selector of an LLMService's decode engines, as the router's
// --endpoint-selector and the InferencePool's spec.selector take it.
func EngineSelector(svc string) string {
	return LabelComponent + "=" + ComponentEngine + "," + LabelService + "=" + svc
}

// routerSelector is the router's --endpoint-selector: the decode engines, and with
// disaggregation the prefill engines too (their llm-d.ai/role labels tell them apart).
func routerSelector(svc string, disaggregated bool) string {
	if !disaggregated {
		return EngineSelector(svc)
	}
	return LabelComponent + " in (" + ComponentEngine + "," + ComponentPrefill + ")," + LabelService + "=" + svc
}

// modelMount says how the engines and the router see spec.model.uri: the directory they
// pass as --model, and the volume and mount that put it there.
type modelMount struct {
	dir    string
	volume corev1.Volume
	mount  corev1.VolumeMount
}

// parseModelURI reads file:///PATH (a hostPath, mounted read-only at the same path) or
// pvc://CLAIM/PATH (the claim mounted read-only at /mnt/models with PATH as its subPath,
// as KServe mounts a pvc:// storageUri).
func parseModelURI(uri string) (modelMount, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return modelMount{}, fmt.Errorf("spec.model.uri %q: %w", uri, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" || !path.IsAbs(u.Path) || path.Clean(u.Path) == "/" {
			return modelMount{}, fmt.Errorf("spec.model.uri %q: want file:///PATH, an absolute directory other than /", uri)
		}
		dir := path.Clean(u.Path)
		hostPathType := corev1.HostPathDirectory
		return modelMount{
			dir:    dir,
			volume: corev1.Volume{Name: "model", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType}}},
			mount:  corev1.VolumeMount{Name: "model", MountPath: dir, ReadOnly: true},
		}, nil
	case "pvc":
		if u.Host == "" {
			return modelMount{}, fmt.Errorf("spec.model.uri %q: want pvc://CLAIM/PATH", uri)
		}
		sub := strings.Trim(path.Clean("/"+u.Path), "/")
		return modelMount{
			dir:    modelMountDir,
			volume: corev1.Volume{Name: "model", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: u.Host, ReadOnly: true}}},
			mount:  corev1.VolumeMount{Name: "model", MountPath: modelMountDir, SubPath: sub, ReadOnly: true},
		}, nil
	}
	return modelMount{}, fmt.Errorf("spec.model.uri %q: scheme %q: want file:// or pvc://", uri, u.Scheme)
}

func ownerRef(svc *v1alpha1.LLMService) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{
		APIVersion: v1alpha1.GroupVersion.String(), Kind: "LLMService",
		Name: svc.Name, UID: svc.UID, Controller: &yes, BlockOwnerDeletion: &yes,
	}
}

func meta(svc *v1alpha1.LLMService, name, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: name, Namespace: svc.Namespace, Labels: objectLabels(svc.Name, component),
		OwnerReferences: []metav1.OwnerReference{ownerRef(svc)},
	}
}

func replicas(p *int32) *int32 {
	if p == nil {
		one := int32(1)
		return &one
	}
	return p
}

func podIPEnv() corev1.EnvVar {
	return corev1.EnvVar{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}
}

// securityContext is what both containers need: no privilege escalation, no
// capabilities, the runtime's default seccomp profile (Pod Security's restricted profile
// asks for these; the image runs as a non-root user).
func securityContext() *corev1.SecurityContext {
	no := false
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: &no,
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func image(t v1alpha1.EngineTemplate) string {
	if t.Image == "" {
		return "servelab:latest"
	}
	return t.Image
}

// engineDeployment is one pool of engines running 'servelab engine' with the spec's model,
// policies and flags.
// role, when set, is the engines' llm-d role: their --role and their llm-d.ai/role label,
// which the router's discovery reads.
func engineDeployment(svc *v1alpha1.LLMService, name, component, role string, pool v1alpha1.WorkloadSpec, model modelMount) *appsv1.Deployment {
	args := []string{
		"engine",
		"--model=" + model.dir,
		"--served-model-name=" + svc.Spec.Model.Name,
		"--host=$(POD_IP)",
		"--port=" + strconv.Itoa(EnginePort),
		"--batch=" + svc.Spec.Batch,
		"--evict=" + svc.Spec.Evict,
	}
	if role != "" {
		args = append(args, "--role="+role)
	}
	args = append(args, pool.Template.Args...)
	c := corev1.Container{
		Name:            "engine",
		Image:           image(pool.Template),
		ImagePullPolicy: pool.Template.ImagePullPolicy,
		Args:            args,
		Env:             append([]corev1.EnvVar{podIPEnv()}, pool.Template.Env...),
		Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: EnginePort, Protocol: corev1.ProtocolTCP}},
		Resources:       pool.Template.Resources,
		VolumeMounts:    []corev1.VolumeMount{model.mount},
		SecurityContext: securityContext(),
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromString("http")}},
			PeriodSeconds: 2, FailureThreshold: 3,
		},
	}
	labels := objectLabels(svc.Name, component)
	if role != "" {
		labels[route.RoleLabel] = role
	}
	// An engine drains its in-flight requests for up to 10 s on SIGTERM (servelab engine).
	grace := int64(30)
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta(svc, name, component),
		Spec: appsv1.DeploymentSpec{
			Replicas: replicas(pool.Replicas),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(svc.Name, component)},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{c},
					Volumes:                       []corev1.Volume{model.volume},
					TerminationGracePeriodSeconds: &grace,
				},
			},
		},
	}
}

// engineService is a headless Service over the decode engines (DNS names for each engine,
// kubectl port-forward; the router finds them by watching pods instead).
func engineService(svc *v1alpha1.LLMService) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: meta(svc, engineName(svc.Name), ComponentEngine),
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Selector:  selectorLabels(svc.Name, ComponentEngine),
			Ports:     []corev1.ServicePort{{Name: "http", Port: EnginePort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}},
			// Engines not yet ready still get DNS records; the router reads readiness itself.
			PublishNotReadyAddresses: true,
		},
	}
}

// eppConfigMap holds the router's EndpointPickerConfig document.
func eppConfigMap(svc *v1alpha1.LLMService, doc string) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: meta(svc, eppName(svc.Name), ComponentRouter),
		Data:       map[string]string{eppKey: doc},
	}
}

// routerDeployment runs 'servelab router' discovering the decode engines from the API
// server. Rolling updates start a new router before stopping an old one (maxSurge 1,
// maxUnavailable 0), and a stopping router leaves the Service's endpoints (preStop) before
// it drains its in-flight requests (SIGTERM), so a policy change drops no request.
func routerDeployment(svc *v1alpha1.LLMService, pol resolvedPolicy, model modelMount) *appsv1.Deployment {
	rt := svc.Spec.Router
	tmpl := v1alpha1.EngineTemplate{Image: image(svc.Spec.Template), ImagePullPolicy: svc.Spec.Template.ImagePullPolicy}
	if rt.Template != nil {
		tmpl = *rt.Template
		if tmpl.Image == "" {
			tmpl.Image = image(svc.Spec.Template)
		}
	}
	scrape := "50ms"
	if rt.ScrapeInterval != nil {
		scrape = rt.ScrapeInterval.Duration.String()
	}
	args := []string{
		"router",
		"--host=$(POD_IP)",
		"--port=" + strconv.Itoa(RouterPort),
		"--router=" + pol.routerArg,
		"--model=" + model.dir,
		"--scrape-interval=" + scrape,
		"--pool-namespace=" + svc.Namespace,
		"--endpoint-selector=" + routerSelector(svc.Name, pol.disaggregated),
		"--endpoint-target-ports=" + strconv.Itoa(EnginePort),
		"--ext-proc-port=" + strconv.Itoa(ExtProcPort),
	}
	if pol.blockSize != 0 {
		args = append(args, "--block-size="+strconv.Itoa(pol.blockSize))
	}
	args = append(args, tmpl.Args...)
	mounts := []corev1.VolumeMount{model.mount}
	volumes := []corev1.Volume{model.volume}
	if pol.epc != "" {
		mounts = append(mounts, corev1.VolumeMount{Name: "epp", MountPath: eppMountDir, ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: "epp", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: eppName(svc.Name)},
		}}})
	}
	c := corev1.Container{
		Name:            "router",
		Image:           tmpl.Image,
		ImagePullPolicy: tmpl.ImagePullPolicy,
		Args:            args,
		Env:             append([]corev1.EnvVar{podIPEnv()}, tmpl.Env...),
		Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: RouterPort, Protocol: corev1.ProtocolTCP},
			{Name: "grpc-ext-proc", ContainerPort: ExtProcPort, Protocol: corev1.ProtocolTCP},
		},
		Resources:       tmpl.Resources,
		VolumeMounts:    mounts,
		SecurityContext: securityContext(),
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromString("http")}},
			PeriodSeconds: 2, FailureThreshold: 2,
		},
		// Endpoints controllers and proxies take a moment to stop sending to a terminating
		// pod; the router keeps serving meanwhile, then drains on SIGTERM.
		Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 5}}},
	}
	zero, one := intstr.FromInt32(0), intstr.FromInt32(1)
	grace := int64(30)
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta(svc, routerName(svc.Name), ComponentRouter),
		Spec: appsv1.DeploymentSpec{
			Replicas: replicas(rt.Replicas),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(svc.Name, ComponentRouter)},
			Strategy: appsv1.DeploymentStrategy{
				Type:          appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &zero, MaxSurge: &one},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      objectLabels(svc.Name, ComponentRouter),
					Annotations: map[string]string{AnnotationRouterConfigHash: pol.hash},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName:            routerName(svc.Name),
					Containers:                    []corev1.Container{c},
					Volumes:                       volumes,
					TerminationGracePeriodSeconds: &grace,
				},
			},
		},
	}
}

// routerService is the router's ClusterIP Service: the OpenAI API (status.url) and the
// endpoint-picker port an InferencePool's endpointPickerRef names.
func routerService(svc *v1alpha1.LLMService) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: meta(svc, routerName(svc.Name), ComponentRouter),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: selectorLabels(svc.Name, ComponentRouter),
			Ports: []corev1.ServicePort{
				{Name: "http", Port: RouterPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "grpc-ext-proc", Port: ExtProcPort, TargetPort: intstr.FromString("grpc-ext-proc"), Protocol: corev1.ProtocolTCP, AppProtocol: ptr("kubernetes.io/h2c")},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// routerRBAC lets the router's pods watch the pods of their namespace (engine discovery).
func routerRBAC(svc *v1alpha1.LLMService) (*corev1.ServiceAccount, *rbacv1.Role, *rbacv1.RoleBinding) {
	name := routerName(svc.Name)
	sa := &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: meta(svc, name, ComponentRouter),
	}
	role := &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: meta(svc, name, ComponentRouter),
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
	}
	rb := &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
		ObjectMeta: meta(svc, name, ComponentRouter),
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: svc.Namespace}},
	}
	return sa, role, rb
}

// inferencePool is GIE's InferencePool (inference.networking.k8s.io/v1) over the decode
// engines, its endpoint picker the router's ext_proc port (field names from GIE's
// api/v1/inferencepool_types.go). Unstructured, so GIE's Go module is not needed.
func inferencePool(svc *v1alpha1.LLMService) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{},
		"spec": map[string]any{
			"selector":    map[string]any{"matchLabels": toAny(selectorLabels(svc.Name, ComponentEngine))},
			"targetPorts": []any{map[string]any{"number": int64(EnginePort)}},
			"endpointPickerRef": map[string]any{
				"kind": "Service",
				"name": routerName(svc.Name),
				"port": map[string]any{"number": int64(ExtProcPort)},
			},
		},
	}}
	u.SetGroupVersionKind(InferencePoolGVK)
	u.SetName(svc.Name)
	u.SetNamespace(svc.Namespace)
	u.SetLabels(objectLabels(svc.Name, ComponentEngine))
	u.SetOwnerReferences([]metav1.OwnerReference{ownerRef(svc)})
	return u
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
