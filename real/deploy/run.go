package deploy

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"servelab/api/v1alpha1"
	"servelab/real/controller"
)

// Dry-run modes, as kubectl names them.
const (
	DryRunNone   = "none"
	DryRunClient = "client"
	DryRunServer = "server"
)

// Options are the flags of 'servelab deploy'.
type Options struct {
	// From is the experiment directory.
	From   string
	Choose ChooseOptions
	// Service names the service and its model.
	Service ServiceOptions
	Kube    KubeOptions
	// Output "yaml" prints the LLMService; with no dry run it is printed and not applied.
	Output string
	// DryRun: none (apply), client (print it, contact no cluster) or server (the server
	// runs the apply and stores nothing: prints what would change).
	DryRun string
	// Wait for Ready after applying, up to Timeout.
	Wait    bool
	Timeout time.Duration
	// PollInterval is how often the status is read while waiting (0: 500 ms).
	PollInterval time.Duration

	// Out takes the YAML and the URL; Log the choice, the diff and the progress.
	Out, Log io.Writer
	// NewClient makes the cluster's client (tests); nil builds one from the kubeconfig.
	NewClient func(*Kube) (client.Client, error)
}

// Run chooses the policy, builds its LLMService and prints, dry-runs or applies it.
func Run(ctx context.Context, o Options) error {
	switch o.DryRun {
	case "", DryRunNone, DryRunClient, DryRunServer:
	default:
		return fmt.Errorf("--dry-run %q: want none, client or server", o.DryRun)
	}
	if o.Output != "" && o.Output != "yaml" {
		return fmt.Errorf("-o %q: only yaml is supported", o.Output)
	}
	choice, err := Choose(o.From, o.Choose)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Log, "experiment %s: deploying %q, %s\n", choice.Experiment.Name(), choice.Label, choice.Why)
	for _, w := range choice.Warnings {
		fmt.Fprintf(o.Log, "  ⚠ %s\n", w)
	}
	offline := o.DryRun == DryRunClient || o.Output == "yaml" && o.DryRun != DryRunServer
	// Offline, the namespace is -n's or none (kubectl apply -f then takes the context's);
	// otherwise the kubeconfig's, as kubectl resolves it.
	var kube *Kube
	svcOpts := o.Service
	svcOpts.Namespace = o.Kube.Namespace
	if !offline {
		if kube, err = LoadKube(o.Kube); err != nil {
			return err
		}
		svcOpts.Namespace = kube.Namespace
	}
	svc, err := Service(choice, svcOpts)
	if err != nil {
		return err
	}
	for _, l := range Summary(svc) {
		fmt.Fprintf(o.Log, "  %s\n", l)
	}
	if offline {
		y, err := YAML(svc)
		if err != nil {
			return err
		}
		_, err = o.Out.Write(y)
		return err
	}
	newClient := o.NewClient
	if newClient == nil {
		newClient = defaultClient
	}
	c, err := newClient(kube)
	if err != nil {
		return err
	}
	where := fmt.Sprintf("llmservice.servelab.io/%s in namespace %s", svc.Name, svc.Namespace)
	if kube.Context != "" {
		where += " (context " + kube.Context + ")"
	}
	// What changes, from the server's own dry run: its defaults and the merge with the
	// fields others own are in it.
	plan, err := Apply(ctx, c, svc, true)
	if err != nil {
		return err
	}
	changes := plan.Changes()
	switch {
	case plan.Before == nil:
		fmt.Fprintf(o.Log, "%s: new\n", where)
	case len(changes) == 0:
		fmt.Fprintf(o.Log, "%s: spec unchanged\n", where)
	default:
		fmt.Fprintf(o.Log, "%s: %d spec changes\n", where, len(changes))
		for _, l := range changes {
			fmt.Fprintf(o.Log, "  %s\n", l)
		}
	}
	if o.DryRun == DryRunServer {
		if o.Output == "yaml" {
			y, err := YAML(stripServerFields(plan.After))
			if err != nil {
				return err
			}
			if _, err := o.Out.Write(y); err != nil {
				return err
			}
		}
		fmt.Fprintf(o.Log, "dry run: nothing applied\n")
		return nil
	}
	res, err := Apply(ctx, c, svc, false)
	if err != nil {
		return err
	}
	verb := "configured"
	switch {
	case res.Before == nil:
		verb = "created"
	case res.Before.Generation == res.After.Generation:
		verb = "unchanged"
	}
	fmt.Fprintf(o.Log, "llmservice.servelab.io/%s %s (server-side apply, field manager %s)\n", svc.Name, verb, FieldManager)
	if o.Output == "yaml" {
		y, err := YAML(stripServerFields(res.After))
		if err != nil {
			return err
		}
		if _, err := o.Out.Write(y); err != nil {
			return err
		}
	}
	if !o.Wait {
		return nil
	}
	fmt.Fprintf(o.Log, "waiting up to %s for Ready\n", o.Timeout)
	done, err := Wait(ctx, c, client.ObjectKeyFromObject(svc), res.After.Generation,
		WaitOptions{Timeout: o.Timeout, Interval: o.PollInterval, Progress: o.Log})
	if err != nil {
		return err
	}
	if done.Status.URL == "" {
		fmt.Fprintf(o.Out, "%s/%s is Ready (the controller reported no URL)\n", svc.Namespace, svc.Name)
		return nil
	}
	fmt.Fprintf(o.Out, "%s\n", done.Status.URL)
	if u := localURL(ctx, c, svc); u != "" {
		fmt.Fprintf(o.Log, "from this machine (servelab cluster up: no cluster DNS, services on loopback): %s\n", u)
	}
	return nil
}

// localURL is the router Service's cluster-IP URL when that IP is a loopback address, as
// on 'servelab cluster up', where the cluster's DNS names do not resolve but its service
// proxy listens on each cluster IP; "" elsewhere.
func localURL(ctx context.Context, c client.Client, svc *v1alpha1.LLMService) string {
	var s corev1.Service
	key := client.ObjectKey{Namespace: svc.Namespace, Name: controller.RouterServiceName(svc.Name)}
	if err := c.Get(ctx, key, &s); err != nil {
		return ""
	}
	ip := net.ParseIP(s.Spec.ClusterIP)
	if ip == nil || !ip.IsLoopback() {
		return ""
	}
	return "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(controller.RouterPort)) + "/v1"
}

// stripServerFields leaves what a person would apply: no status, no managed fields, no
// server-set identity.
func stripServerFields(svc *v1alpha1.LLMService) *v1alpha1.LLMService {
	out := svc.DeepCopy()
	out.Status = v1alpha1.LLMServiceStatus{}
	out.ManagedFields = nil
	out.UID, out.ResourceVersion, out.Generation, out.CreationTimestamp = "", "", 0, metav1.Time{}
	out.APIVersion, out.Kind = v1alpha1.GroupVersion.String(), "LLMService"
	return out
}

// Scheme holds the types a deploy reads and writes.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

func defaultClient(k *Kube) (client.Client, error) {
	s, err := Scheme()
	if err != nil {
		return nil, err
	}
	c, err := client.New(k.Config, client.Options{Scheme: s})
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", k.Config.Host, err)
	}
	return c, nil
}
