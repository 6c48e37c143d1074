package main

import (
	"errors"
	"time"

	"github.com/spf13/cobra"

	"servelab/real/deploy"
)

func newDeployCmd() *cobra.Command {
	var (
		o        deploy.Options
		pick     string
		replicas int32
	)
	cmd := &cobra.Command{
		Use:   "deploy --from runs/NAME (--pick best | --policy LABEL) [--model-uri URI]",
		Short: "Deploy an experiment's winning policy to a Kubernetes cluster as an LLMService",
		Long: `Read an experiment directory ('servelab run' writes runs/NAME), choose a policy and write
the LLMService (servelab.io/v1alpha1) that runs it:

  --pick best       the policy 'servelab report' ranks first: by request goodput (requests
                    per second meeting the SLO), ties broken by the lower p99 TTFT, means
                    over seeds; give --rate-scale when the spec sweeps rate_scale
  --policy LABEL    a policy as the report labels it, e.g. "least-request / lru"

The service runs its router policy as spec.router.policy (a servelab spec) or, when the
experiment named an EndpointPickerConfig file, spec.router.endpointPickerConfig (the file's
contents, inline); its batch and evict specs; spec.source naming the experiment and policy;
spec.replicas from the experiment's cluster.instances (or --replicas). A real-world
experiment's model directory is the default --model-uri, and its KV-cache settings
(block size, blocks, max model len) become engine flags.

Without -o yaml or --dry-run it server-side applies the service (field manager servelab,
taking ownership of the fields it sets), showing first what changes on an existing one, then
waits for the controller's Ready condition, printing progress (engines and router ready, and
PolicyApplied's reason while it is not True; it stops at once when the controller refuses the
spec: reason InvalidPolicy, InvalidArgs or InvalidModel) up to --timeout, and prints the
service's URL.

  -o yaml                 print the LLMService and apply nothing (no cluster needed)
  --dry-run=client        the same
  --dry-run[=server]      the API server runs the apply and stores nothing: shows what would
                          change (with -o yaml, the object it would store)

The cluster is found as kubectl finds it: --kubeconfig, else KUBECONFIG, else ~/.kube/config;
--context, else the current context; -n, else the context's namespace.`,
		Example: `  servelab run experiments/examples/azure-routers.yaml
  servelab deploy --from runs/azure-routers --pick best --model-uri pvc://models/llama-3.1-8b -o yaml
  servelab deploy --from runs/real-tiny --policy "prefix-affinity / lru" -n llm --image registry.example/servelab:v1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch pick {
			case "":
			case "best":
				o.Choose.Best = true
			default:
				return errors.New("--pick: only 'best' is supported (or give --policy LABEL)")
			}
			if o.From == "" {
				return errors.New("--from: required: the experiment directory, runs/NAME")
			}
			if cmd.Flags().Changed("replicas") {
				o.Service.Replicas = &replicas
			}
			if o.Timeout <= 0 {
				return errors.New("--timeout: must be positive")
			}
			o.Out, o.Log = cmd.OutOrStdout(), cmd.ErrOrStderr()
			return deploy.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.From, "from", "", "the experiment directory (runs/NAME)")
	f.StringVar(&pick, "pick", "", "'best': the policy the experiment's report ranks first")
	f.StringVar(&o.Choose.Policy, "policy", "", `the policy to deploy, as the report labels it ("least-request / lru")`)
	f.Float64Var(&o.Choose.RateScale, "rate-scale", 0, "the rate scale whose results to use, in a spec that sweeps rate_scale")
	f.StringVar(&o.Service.Name, "name", "", "the LLMService's name (default: the experiment's name as a DNS label)")
	f.StringVar(&o.Service.ModelURI, "model-uri", "", "where the model directory is: file:///PATH on the node or pvc://CLAIM/PATH (default: a real-world experiment's model)")
	f.StringVar(&o.Service.ServedModelName, "served-model-name", "", "the model's name in the API (default: the model directory's base name)")
	f.Int32Var(&replicas, "replicas", 0, "engines (default: the experiment's cluster.instances)")
	f.StringVar(&o.Service.Image, "image", "", "the servelab image of the engines and router (default: the CRD's, servelab:latest)")
	f.StringVar(&o.Service.Dir, "policy-dir", "", "where a relative EndpointPickerConfig file the experiment named resolves (default: the working directory)")
	f.StringVarP(&o.Output, "output", "o", "", "yaml: print the LLMService instead of applying it")
	f.StringVar(&o.DryRun, "dry-run", deploy.DryRunNone, "none, client (print, contact no cluster) or server (show what would change, store nothing)")
	f.Lookup("dry-run").NoOptDefVal = deploy.DryRunServer
	f.BoolVar(&o.Wait, "wait", true, "wait for the service to be Ready")
	f.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "how long to wait for Ready")
	f.StringVar(&o.Kube.Kubeconfig, "kubeconfig", "", "the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
	f.StringVar(&o.Kube.Context, "context", "", "the kubeconfig context (default: the current context)")
	f.StringVarP(&o.Kube.Namespace, "namespace", "n", "", "the namespace (default: the context's, else default)")
	return cmd
}
