package controller

import (
	"time"

	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"

	"servelab/api/v1alpha1"
)

// LeaderElectionID is the name of the Lease the controller's replicas elect a leader with.
const LeaderElectionID = "servelab-controller"

// Options configure the controller's manager.
type Options struct {
	// Namespace restricts the controller to one namespace; "" watches all.
	Namespace string
	// LeaderElection makes replicas elect one active controller (Lease LeaderElectionID in
	// LeaderElectionNamespace, default: the namespace the controller runs in).
	LeaderElection          bool
	LeaderElectionNamespace string
	// MetricsBindAddress serves the controller's Prometheus /metrics (controller-runtime's
	// workqueue, reconcile and client metrics); "0" turns it off.
	MetricsBindAddress string
	// HealthProbeBindAddress serves /healthz and /readyz; "0" turns it off.
	HealthProbeBindAddress string
	// MaxConcurrentReconciles is how many LLMServices are reconciled at once (default 4).
	MaxConcurrentReconciles int
	// ClusterDomain is the cluster's DNS domain, for status.url (default cluster.local).
	ClusterDomain string
	// Flags check template args against servelab's commands.
	Flags FlagSets
	// SkipNameValidation lets a process register the controller more than once (tests).
	SkipNameValidation bool
}

// Scheme holds the types the controller reads and writes.
func Scheme() (*k8sruntime.Scheme, error) {
	s := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// NewManager returns a manager running the LLMService controller, with health checks.
func NewManager(cfg *rest.Config, o Options) (ctrl.Manager, error) {
	scheme, err := Scheme()
	if err != nil {
		return nil, err
	}
	mo := ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: o.MetricsBindAddress},
		HealthProbeBindAddress:        o.HealthProbeBindAddress,
		LeaderElection:                o.LeaderElection,
		LeaderElectionID:              LeaderElectionID,
		LeaderElectionNamespace:       o.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       ptr(30 * time.Second),
	}
	if o.Namespace != "" {
		mo.Cache = cache.Options{DefaultNamespaces: map[string]cache.Config{o.Namespace: {}}}
	}
	mgr, err := ctrl.NewManager(cfg, mo)
	if err != nil {
		return nil, err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	r := &Reconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder(FieldManager), RESTMapper: mgr.GetRESTMapper(),
		Flags: o.Flags, ClusterDomain: o.ClusterDomain,
		// The engine pods are listed uncached, once per decision, rather than every pod of
		// the cluster kept in the cache.
		Metrics: &PodMetrics{Client: mgr.GetAPIReader()},
	}
	var _ events.EventRecorder = r.Recorder
	n := o.MaxConcurrentReconciles
	if n <= 0 {
		n = 4
	}
	copts := controller.Options{MaxConcurrentReconciles: n}
	if o.SkipNameValidation {
		copts.SkipNameValidation = ptr(true)
	}
	if err := r.SetupWithManager(mgr, copts); err != nil {
		return nil, err
	}
	return mgr, nil
}
