// Package controller is servelab's Kubernetes controller: it reconciles each LLMService
// (servelab.io/v1alpha1) into the objects that serve it, owned by it so that deleting it
// deletes them: the engine Deployment (and a prefill one), a headless Service over the
// engines, the router's ServiceAccount, Role and RoleBinding (it watches the engine pods),
// a ConfigMap with its EndpointPickerConfig, the router Deployment and Service, and, when
// the Gateway API Inference Extension's CRDs are installed, an InferencePool whose
// endpoint picker is the router. Every policy is built as the engines and router will
// build it before anything is deployed; an invalid one leaves what runs untouched and says
// why in the PolicyApplied condition.
//
// Reconciliation is level-triggered and idempotent: every object is server-side applied
// in full by the field manager "servelab-controller" (a second pass changes nothing), and
// the status is written, through the status subresource, only when it changed.
package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"servelab/api/v1alpha1"
	"servelab/policies/route"
)

// The RBAC the controller needs; controller-gen writes config/rbac/role.yaml from these
// ('make generate'). Pods: the controller grants its routers get/list/watch on pods, and
// Kubernetes lets it grant only what it holds.
//
// +kubebuilder:rbac:groups=servelab.io,resources=llmservices,verbs=get;list;watch
// +kubebuilder:rbac:groups=servelab.io,resources=llmservices/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=servelab.io,resources=llmservices/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=services;configmaps;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=inference.networking.k8s.io,resources=inferencepools,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete

// Event reasons.
const (
	EventDeployed      = "Deployed"
	EventPolicyChanged = "PolicyChanged"
	EventInvalidPolicy = ReasonInvalidPolicy
)

// Reasons of the readiness conditions.
const (
	ReasonReady            = "Ready"
	ReasonNotDeployed      = "NotDeployed"
	ReasonProgressing      = "Progressing"
	ReasonPolicyNotApplied = "PolicyNotApplied"
	ReasonEnginesNotReady  = "EnginesNotReady"
	ReasonRouterNotReady   = "RouterNotReady"
)

// Reconciler reconciles LLMServices.
type Reconciler struct {
	// Client reads and applies objects (the manager's cached client in production).
	Client client.Client
	// Recorder records events on LLMServices; nil records none.
	Recorder events.EventRecorder
	// RESTMapper tells whether GIE's InferencePool CRD is installed; nil: never.
	RESTMapper apimeta.RESTMapper
	// Flags check template args against the engine's and router's flags.
	Flags FlagSets
	// ClusterDomain is the cluster's DNS domain, for status.url (default cluster.local).
	ClusterDomain string

	// Metrics reads the engine pools' metrics for spec.autoscale; nil: PodMetrics over
	// Client (the engine pods' /metrics).
	Metrics Metrics
	// Clock is the autoscalers' clock; nil: time.Now.
	Clock func() time.Time

	scalers    autoscalers
	metricsMu  sync.Mutex
	gieMu      sync.Mutex
	gieChecked time.Time
	gieHave    bool
}

// configRefIndex indexes LLMServices by the ConfigMap their EndpointPickerConfig comes from.
const configRefIndex = "spec.router.endpointPickerConfigRef.name"

// SetupWithManager registers the controller: LLMServices, the objects they own, and the
// ConfigMaps their EndpointPickerConfigs come from.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.LLMService{}, configRefIndex, func(o client.Object) []string {
		if ref := o.(*v1alpha1.LLMService).Spec.Router.EndpointPickerConfigRef; ref != nil {
			return []string{ref.Name}
		}
		return nil
	}); err != nil {
		return err
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("llmservice").
		WithOptions(opts).
		// Status writes (the controller's own) change no generation: no reconcile for them.
		For(&v1alpha1.LLMService{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.servicesOfConfigMap))
	// InferencePools are watched when GIE is installed at start (one installed later is
	// still created, and re-applied on the LLMService's next reconcile).
	have, err := r.haveInferencePool()
	if err != nil {
		return err
	}
	if have {
		pool := &unstructured.Unstructured{}
		pool.SetGroupVersionKind(InferencePoolGVK)
		b = b.Owns(pool)
	}
	return b.Complete(r)
}

// servicesOfConfigMap maps a ConfigMap to the LLMServices that own it or read their
// EndpointPickerConfig from it.
func (r *Reconciler) servicesOfConfigMap(ctx context.Context, o client.Object) []reconcile.Request {
	var out []reconcile.Request
	if owner := metav1.GetControllerOf(o); owner != nil && owner.Kind == "LLMService" && owner.APIVersion == v1alpha1.GroupVersion.String() {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: owner.Name}})
	}
	var list v1alpha1.LLMServiceList
	if err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{configRefIndex: o.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "listing LLMServices that read ConfigMap", "configmap", o.GetName())
		return out
	}
	for _, s := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: s.Name}})
	}
	return out
}

// Reconcile brings one LLMService's objects and status to what its spec says.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var svc v1alpha1.LLMService
	if err := r.Client.Get(ctx, req.NamespacedName, &svc); err != nil {
		// Deleted: the API server's garbage collector deletes what it owned.
		if apierrors.IsNotFound(err) {
			r.forgetScaler(req.NamespacedName)
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !svc.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, nil
	}
	before := svc.Status.DeepCopy()
	status := svc.Status.DeepCopy()
	status.ObservedGeneration = svc.Generation

	pol, perr := r.resolvePolicy(ctx, &svc)
	if perr != nil {
		// Keep what runs; say why. A fixed spec (or a ConfigMap that appears) triggers the
		// next reconcile, so there is nothing to retry.
		return reconcile.Result{}, r.notApplied(ctx, &svc, before, status, perr.reason, "Validate", perr.msg)
	}

	// The engine pool's replicas: spec.replicas, or spec.autoscale's decision.
	engines, requeue := *replicas(svc.Spec.Replicas), time.Duration(0)
	if svc.Spec.Autoscale != "" {
		cur, err := r.deployment(ctx, svc.Namespace, engineName(svc.Name))
		if err != nil {
			return reconcile.Result{}, err
		}
		var ready, have int32
		if cur != nil {
			ready, have = cur.Status.ReadyReplicas, *replicas(cur.Spec.Replicas)
		}
		engines, requeue = r.autoscale(ctx, &svc, status, ready, have, cur != nil)
	} else {
		r.forgetScaler(req.NamespacedName)
		status.Autoscale = nil
		apimeta.RemoveStatusCondition(&status.Conditions, v1alpha1.ConditionScalingActive)
	}
	pol.engineReplicas = engines

	changed, err := r.applyAll(ctx, &svc, pol)
	var notOwned *notOwnedError
	if errors.As(err, &notOwned) {
		// Nothing of ours watches the other object: look again in a minute.
		return reconcile.Result{RequeueAfter: time.Minute}, r.notApplied(ctx, &svc, before, status, ReasonResourceExists, "Deploy", notOwned.Error())
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	switch {
	case changed.created:
		r.event(&svc, corev1.EventTypeNormal, EventDeployed, "Deploy", fmt.Sprintf("deployed %d engines and %d routers, routing policy %s, batch %s, evict %s",
			pol.engineReplicas, *replicas(svc.Spec.Router.Replicas), pol.label, svc.Spec.Batch, svc.Spec.Evict))
	case len(changed.policies) > 0:
		r.event(&svc, corev1.EventTypeNormal, EventPolicyChanged, "Roll", strings.Join(changed.policies, "; "))
	}
	apimeta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: v1alpha1.ConditionPolicyApplied, Status: metav1.ConditionTrue, Reason: ReasonApplied,
		Message:            fmt.Sprintf("routing policy %s, batch %s, evict %s", pol.label, svc.Spec.Batch, svc.Spec.Evict),
		ObservedGeneration: svc.Generation,
	})
	status.Policy = pol.label
	status.Source = svc.Spec.Source.DeepCopy()
	domain := r.ClusterDomain
	if domain == "" {
		domain = "cluster.local"
	}
	status.URL = fmt.Sprintf("http://%s.%s.svc.%s:%d/v1", routerName(svc.Name), svc.Namespace, domain, RouterPort)
	if err := r.observe(ctx, &svc, status); err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: requeue}, r.writeStatus(ctx, &svc, before, status)
}

// metrics returns r.Metrics, or PodMetrics over r.Client.
func (r *Reconciler) metrics() Metrics {
	r.metricsMu.Lock()
	defer r.metricsMu.Unlock()
	if r.Metrics == nil {
		r.Metrics = &PodMetrics{Client: r.Client}
	}
	return r.Metrics
}

// notApplied records why svc's spec is not deployed (PolicyApplied False, a Warning event
// when the reason is news) and writes the status, the rest of it observed as it is.
func (r *Reconciler) notApplied(ctx context.Context, svc *v1alpha1.LLMService, before, status *v1alpha1.LLMServiceStatus, reason, action, msg string) error {
	prev := apimeta.FindStatusCondition(before.Conditions, v1alpha1.ConditionPolicyApplied)
	if prev == nil || prev.Status != metav1.ConditionFalse || prev.Message != msg {
		r.event(svc, corev1.EventTypeWarning, reason, action, msg)
	}
	apimeta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: v1alpha1.ConditionPolicyApplied, Status: metav1.ConditionFalse,
		Reason: reason, Message: msg, ObservedGeneration: svc.Generation,
	})
	if err := r.observe(ctx, svc, status); err != nil {
		return err
	}
	return r.writeStatus(ctx, svc, before, status)
}

func (r *Reconciler) event(svc *v1alpha1.LLMService, typ, reason, action, note string) {
	if r.Recorder != nil {
		r.Recorder.Eventf(svc, nil, typ, reason, action, "%s", note)
	}
}

// changes says what an apply changed, for events.
type changes struct {
	// created: the router was not there before (a first deployment).
	created bool
	// policies: "routing policy X (was Y): rolling the router", "batch ..."
	policies []string
}

// argValue is the value of --name=VALUE in args ("" if absent).
func argValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// applyAll server-side applies every object svc owns and deletes those it no longer has.
func (r *Reconciler) applyAll(ctx context.Context, svc *v1alpha1.LLMService, pol resolvedPolicy) (changes, error) {
	model, err := parseModelURI(svc.Spec.Model.URI)
	if err != nil { // resolvePolicy checked it
		return changes{}, err
	}
	sa, role, rb := routerRBAC(svc)
	objs := []runtime.Object{sa, role, rb}
	// What svc no longer has goes after the rest is applied: the router Deployment stops
	// mounting its ConfigMap before the ConfigMap is deleted.
	type staleObj struct {
		obj  client.Object
		name string
	}
	var stale []staleObj
	if pol.epc != "" {
		objs = append(objs, eppConfigMap(svc, pol.epc))
	} else {
		stale = append(stale, staleObj{&corev1.ConfigMap{}, eppName(svc.Name)})
	}
	// With a prefill pool the engines take llm-d's roles; without one they keep none (a
	// decode-filter passes an engine without the label, as llm-d's does).
	decodeRole := ""
	if pol.disaggregated {
		decodeRole = route.RoleDecode
	}
	pool := svc.Spec.WorkloadSpec
	pool.Replicas = &pol.engineReplicas
	objs = append(objs, engineService(svc), engineDeployment(svc, engineName(svc.Name), ComponentEngine, decodeRole, pool, model))
	if p := svc.Spec.Prefill; p != nil {
		objs = append(objs, engineDeployment(svc, prefillName(svc.Name), ComponentPrefill, route.RolePrefill, *p, model))
	} else {
		stale = append(stale, staleObj{&appsv1.Deployment{}, prefillName(svc.Name)})
	}

	var ch changes
	curRouter, err := r.deployment(ctx, svc.Namespace, routerName(svc.Name))
	if err != nil {
		return changes{}, err
	}
	switch {
	case curRouter == nil:
		ch.created = true
	case curRouter.Spec.Template.Annotations[AnnotationRouterConfigHash] != pol.hash:
		was := argValue(curRouter.Spec.Template.Spec.Containers[0].Args, "router")
		if strings.HasPrefix(was, eppMountDir) {
			was = "EndpointPickerConfig"
		}
		if was == pol.label {
			ch.policies = append(ch.policies, fmt.Sprintf("routing policy %s changed: rolling the router", pol.label))
		} else {
			ch.policies = append(ch.policies, fmt.Sprintf("routing policy %s (was %s): rolling the router", pol.label, was))
		}
	}
	if curEngine, err := r.deployment(ctx, svc.Namespace, engineName(svc.Name)); err != nil {
		return changes{}, err
	} else if curEngine != nil {
		args := curEngine.Spec.Template.Spec.Containers[0].Args
		for _, p := range []struct{ flag, now string }{{"batch", svc.Spec.Batch}, {"evict", svc.Spec.Evict}} {
			if was := argValue(args, p.flag); was != p.now {
				ch.policies = append(ch.policies, fmt.Sprintf("%s %s (was %s): rolling the engines", p.flag, p.now, was))
			}
		}
	}
	objs = append(objs, routerDeployment(svc, pol, model), routerService(svc))

	have, err := r.haveInferencePool()
	if err != nil {
		return changes{}, err
	}
	if have {
		objs = append(objs, inferencePool(svc))
	}
	// Take nothing over: every name must be free or svc's before anything is applied.
	us := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		if us[i], err = toApply(o); err != nil {
			return changes{}, err
		}
		if err := r.checkOwner(ctx, svc, us[i]); err != nil {
			return changes{}, err
		}
	}
	for _, u := range us {
		if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
			return changes{}, fmt.Errorf("applying %s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
	for _, o := range stale {
		if err := r.deleteOwned(ctx, svc, o.obj, o.name); err != nil {
			return changes{}, err
		}
	}
	return ch, nil
}

// toApply is obj as the controller server-side applies it, whole, as its field manager.
func toApply(obj runtime.Object) (*unstructured.Unstructured, error) {
	if u, ok := obj.(*unstructured.Unstructured); ok {
		return u, nil
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	delete(m, "status")
	prune(m)
	return &unstructured.Unstructured{Object: m}, nil
}

// notOwnedError: an object the controller would create exists and belongs to something else.
type notOwnedError struct{ kind, name string }

func (e *notOwnedError) Error() string {
	return fmt.Sprintf("%s %s exists and is not controlled by this LLMService; delete or rename it, or rename the LLMService", e.kind, e.name)
}

// checkOwner refuses to take over an object of the same name that svc does not control
// (a forced apply would).
func (r *Reconciler) checkOwner(ctx context.Context, svc *v1alpha1.LLMService, u *unstructured.Unstructured) error {
	gvk := u.GroupVersionKind()
	var cur client.Object
	if o, err := r.Client.Scheme().New(gvk); err == nil {
		cur = o.(client.Object)
	} else {
		uc := &unstructured.Unstructured{}
		uc.SetGroupVersionKind(gvk)
		cur = uc
	}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: u.GetNamespace(), Name: u.GetName()}, cur)
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return err
	case !metav1.IsControlledBy(cur, svc):
		return &notOwnedError{gvk.Kind, u.GetName()}
	}
	return nil
}

// prune drops nulls and empty objects a typed object's conversion leaves (a zero
// creationTimestamp, empty resources), which an apply would otherwise claim.
func prune(m map[string]any) {
	for k, v := range m {
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			prune(x)
			if len(x) == 0 && k != "emptyDir" {
				delete(m, k)
			}
		case []any:
			for _, e := range x {
				if em, ok := e.(map[string]any); ok {
					prune(em)
				}
			}
		}
	}
}

// deleteOwned deletes the named object if svc controls it.
func (r *Reconciler) deleteOwned(ctx context.Context, svc *v1alpha1.LLMService, obj client.Object, name string) error {
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: svc.Namespace, Name: name}, obj)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !metav1.IsControlledBy(obj, svc) {
		return nil
	}
	uid := obj.GetUID()
	return client.IgnoreNotFound(r.Client.Delete(ctx, obj, client.Preconditions{UID: &uid}))
}

// haveInferencePool tells whether GIE's InferencePool (v1) is served; a missing one is
// looked up again after a minute (the RESTMapper asks the API server on every miss).
func (r *Reconciler) haveInferencePool() (bool, error) {
	if r.RESTMapper == nil {
		return false, nil
	}
	r.gieMu.Lock()
	defer r.gieMu.Unlock()
	if r.gieHave || (!r.gieChecked.IsZero() && time.Since(r.gieChecked) < time.Minute) {
		return r.gieHave, nil
	}
	_, err := r.RESTMapper.RESTMapping(InferencePoolGVK.GroupKind(), InferencePoolGVK.Version)
	switch {
	case err == nil:
		r.gieHave = true
	case apimeta.IsNoMatchError(err):
	default:
		return false, err
	}
	r.gieChecked = time.Now()
	return r.gieHave, nil
}

// observe fills the status from the Deployments as they are.
func (r *Reconciler) observe(ctx context.Context, svc *v1alpha1.LLMService, st *v1alpha1.LLMServiceStatus) error {
	gen := svc.Generation
	type pool struct {
		name string
		want int32
	}
	want := *replicas(svc.Spec.Replicas)
	if st.Autoscale != nil && svc.Spec.Autoscale != "" {
		want = st.Autoscale.DesiredReplicas
	}
	pools := []pool{{engineName(svc.Name), want}}
	if p := svc.Spec.Prefill; p != nil {
		pools = append(pools, pool{prefillName(svc.Name), *replicas(p.Replicas)})
	}
	st.Replicas, st.ReadyReplicas = 0, 0
	enginesOK, engineReason, engineMsg := true, ReasonReady, ""
	for _, p := range pools {
		d, err := r.deployment(ctx, svc.Namespace, p.name)
		if err != nil {
			return err
		}
		st.Replicas += p.want
		ready, ok, why := rolledOut(d, p.want)
		st.ReadyReplicas += ready
		if !ok && enginesOK {
			enginesOK, engineReason, engineMsg = false, why, fmt.Sprintf("Deployment %s: %d/%d ready (%s)", p.name, ready, p.want, why)
		}
	}
	st.Engines = fmt.Sprintf("%d/%d", st.ReadyReplicas, st.Replicas)
	if enginesOK {
		engineMsg = st.Engines + " engines ready"
	}
	setCond(st, v1alpha1.ConditionEnginesReady, enginesOK, engineReason, engineMsg, gen)

	d, err := r.deployment(ctx, svc.Namespace, routerName(svc.Name))
	if err != nil {
		return err
	}
	want = *replicas(svc.Spec.Router.Replicas)
	ready, ok, why := rolledOut(d, want)
	st.RouterReadyReplicas = ready
	setCond(st, v1alpha1.ConditionRouterReady, ok, why, fmt.Sprintf("%d/%d routers ready", ready, want), gen)

	all, reason, msg := true, ReasonReady, "engines, router and policy in place"
	for _, c := range []struct{ typ, reason string }{
		{v1alpha1.ConditionPolicyApplied, ReasonPolicyNotApplied},
		{v1alpha1.ConditionEnginesReady, ReasonEnginesNotReady},
		{v1alpha1.ConditionRouterReady, ReasonRouterNotReady},
	} {
		cond := apimeta.FindStatusCondition(st.Conditions, c.typ)
		if cond == nil || cond.Status != metav1.ConditionTrue {
			all, reason = false, c.reason
			if cond != nil {
				msg = cond.Message
			}
			break
		}
	}
	setCond(st, v1alpha1.ConditionReady, all, reason, msg, gen)
	return nil
}

func setCond(st *v1alpha1.LLMServiceStatus, typ string, ok bool, reason, msg string, gen int64) {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	apimeta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
}

func (r *Reconciler) deployment(ctx context.Context, ns, name string) (*appsv1.Deployment, error) {
	var d appsv1.Deployment
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &d)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return &d, err
}

// rolledOut reports a Deployment's ready pods and whether its current template runs on
// all wanted replicas (the Deployment controller has seen it, every pod is updated and
// ready, no old pod is left).
func rolledOut(d *appsv1.Deployment, want int32) (ready int32, ok bool, reason string) {
	if d == nil {
		return 0, false, ReasonNotDeployed
	}
	st := d.Status
	ok = st.ObservedGeneration >= d.Generation && st.UpdatedReplicas >= want && st.ReadyReplicas >= want && st.Replicas == st.UpdatedReplicas
	if ok {
		return st.ReadyReplicas, true, ReasonReady
	}
	return st.ReadyReplicas, false, ReasonProgressing
}

// writeStatus updates the status subresource when it changed.
func (r *Reconciler) writeStatus(ctx context.Context, svc *v1alpha1.LLMService, before, after *v1alpha1.LLMServiceStatus) error {
	if equality.Semantic.DeepEqual(before, after) {
		return nil
	}
	svc.Status = *after
	return r.Client.Status().Update(ctx, svc)
}
