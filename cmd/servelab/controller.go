package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"

	"servelab/real/controller"
)

// inClusterNamespace is where a pod's service account token says it runs.
const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func newControllerCmd() *cobra.Command {
	var (
		o          controller.Options
		kubeCtx    string
		verbose    bool
		jsonLogs   bool
		leaderNSIn string
	)
	cmd := &cobra.Command{
		Use:   "controller [--kubeconfig FILE] [--namespace NS] [--leader-elect]",
		Short: "Run the Kubernetes controller that deploys LLMServices (servelab.io/v1alpha1)",
		Long: `Reconcile LLMService objects (servelab.io/v1alpha1; install the CRD from config/crd/) into
what serves them, each owned by its LLMService: the engine Deployment NAME-engine (NAME-prefill
too with spec.prefill) running 'servelab engine', a headless Service NAME-engine, the router
Deployment and Service NAME-router running 'servelab router' (it discovers the engine pods through
the API server, with ServiceAccount, Role and RoleBinding NAME-router), a ConfigMap NAME-epp with
the router's EndpointPickerConfig, and, when the Gateway API Inference Extension's CRDs are
installed, an InferencePool NAME whose endpoint picker is the router's ext_proc port (9002).

Every routing, batch and evict policy and every template flag is built as the engine and router
build them before anything is deployed; an invalid one sets condition PolicyApplied=False with a
reason (InvalidPolicy, InvalidArgs, ConfigMapNotFound, ...) and a Warning event, and leaves what
runs untouched. A changed policy rolls the router one pod at a time (a new one ready before an old
one stops; a stopping router finishes its in-flight requests).

The kubeconfig is found as kubectl finds it: --kubeconfig, $KUBECONFIG, the in-cluster service
account, ~/.kube/config. Its own metrics (controller-runtime's reconcile, work-queue and client
metrics) are on --metrics-bind-address /metrics; /healthz and /readyz on
--health-probe-bind-address. SIGTERM stops it after the reconciles under way.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			var h slog.Handler = slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level})
			if jsonLogs {
				h = slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level})
			}
			logger := logr.FromSlogHandler(h)
			ctrl.SetLogger(logger)
			klog.SetLogger(logger) // leader election and client-go log through klog

			cfg, err := config.GetConfigWithContext(kubeCtx)
			if err != nil {
				return fmt.Errorf("kubeconfig: %w", err)
			}
			o.LeaderElectionNamespace = leaderNSIn
			if o.LeaderElection && o.LeaderElectionNamespace == "" {
				if data, err := os.ReadFile(inClusterNamespace); err == nil {
					o.LeaderElectionNamespace = string(data)
				} else if o.Namespace != "" {
					o.LeaderElectionNamespace = o.Namespace
				} else if ns, err := kubeconfigNamespace(kubeCtx); err == nil {
					// A process with a kubeconfig rather than a service-account mount (a
					// pod of servelab cluster up's node, or a laptop): the context's
					// namespace, as kubectl takes it.
					o.LeaderElectionNamespace = ns
				} else {
					return fmt.Errorf("--leader-elect outside a cluster needs --leader-election-namespace (or --namespace): %w", err)
				}
			}
			o.Flags = controller.FlagSets{
				Engine: func() *pflag.FlagSet { return newEngineCmd().Flags() },
				Router: func() *pflag.FlagSet { return newRouterCmd().Flags() },
			}
			mgr, err := controller.NewManager(cfg, o)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			scope := "all namespaces"
			if o.Namespace != "" {
				scope = "namespace " + o.Namespace
			}
			fmt.Fprintf(cmd.OutOrStdout(), "servelab controller: watching LLMServices in %s on %s; metrics on http://%s/metrics\n", scope, cfg.Host, o.MetricsBindAddress)
			return mgr.Start(ctx)
		},
	}
	fl := cmd.Flags()
	// controller-runtime's --kubeconfig (its config package reads it).
	if f := flag.CommandLine.Lookup(config.KubeconfigFlagName); f != nil {
		fl.AddGoFlag(f)
	}
	fl.StringVar(&kubeCtx, "context", "", "the kubeconfig context to use (default: its current context)")
	fl.StringVarP(&o.Namespace, "namespace", "n", "", "watch LLMServices in this namespace only (default: all namespaces)")
	fl.BoolVar(&o.LeaderElection, "leader-elect", false, "elect one active controller among replicas (Lease "+controller.LeaderElectionID+")")
	fl.StringVar(&leaderNSIn, "leader-election-namespace", "", "namespace of the leader-election Lease (default: the pod's namespace in a cluster, else --namespace)")
	fl.StringVar(&o.MetricsBindAddress, "metrics-bind-address", "127.0.0.1:8081", `address of the controller's Prometheus /metrics ("0": off)`)
	fl.StringVar(&o.HealthProbeBindAddress, "health-probe-bind-address", "127.0.0.1:8082", `address of /healthz and /readyz ("0": off)`)
	fl.IntVar(&o.MaxConcurrentReconciles, "max-concurrent-reconciles", 4, "LLMServices reconciled at once")
	fl.StringVar(&o.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain, for status.url")
	fl.BoolVarP(&verbose, "verbose", "v", false, "debug logs")
	fl.BoolVar(&jsonLogs, "log-json", false, "JSON logs")
	return cmd
}

// kubeconfigNamespace is the namespace of the kubeconfig context the controller uses
// (--kubeconfig, else $KUBECONFIG and ~/.kube/config; --context, else the current one), or
// "default" when the context names none, as kubectl does.
func kubeconfigNamespace(kubeCtx string) (string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if f := flag.CommandLine.Lookup(config.KubeconfigFlagName); f != nil {
		rules.ExplicitPath = f.Value.String()
	}
	ns, _, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeCtx}).Namespace()
	return ns, err
}
