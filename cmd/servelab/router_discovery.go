package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"

	"servelab/real/router"
	"servelab/real/router/discovery"
)

// discoveryFlags are the router's Kubernetes discovery flags, named as GIE's endpoint
// picker names them in its standalone mode (cmd/epp/runner/options.go).
type discoveryFlags struct {
	namespace, selector, ports, kubeconfig string
	// syncTimeout bounds the first list of pods.
	syncTimeout time.Duration
}

func (d *discoveryFlags) addFlags(fl *pflag.FlagSet) {
	fl.StringVar(&d.selector, "endpoint-selector", "", "discover engines from Kubernetes: a label selector of the engine pods (kubectl syntax, e.g. 'app=vllm,tier in (a,b)'); instead of --endpoints")
	fl.StringVar(&d.ports, "endpoint-target-ports", "", "with --endpoint-selector: the engines' ports on each pod, comma separated (one endpoint per ready pod and port)")
	fl.StringVar(&d.namespace, "pool-namespace", "", "with --endpoint-selector: the pods' namespace (default $NAMESPACE, else the kubeconfig context's or the router pod's own, else default)")
	fl.StringVar(&d.kubeconfig, "kubeconfig", "", "with --endpoint-selector: the kubeconfig file (default $KUBECONFIG, ~/.kube/config, else the in-cluster config)")
	d.syncTimeout = time.Minute
}

// check validates the flags against --endpoints: exactly one way to find engines.
func (d *discoveryFlags) check(endpoints []string) error {
	switch {
	case len(endpoints) > 0 && d.selector != "":
		return errors.New("--endpoints and --endpoint-selector are mutually exclusive: give the engines' URLs, or a label selector to discover their pods from Kubernetes")
	case len(endpoints) == 0 && d.selector == "":
		return errors.New("no engines: give --endpoints URL,URL,... or --endpoint-selector SELECTOR with --endpoint-target-ports PORTS to discover their pods from Kubernetes")
	case d.selector == "":
		for name, v := range map[string]string{"--endpoint-target-ports": d.ports, "--pool-namespace": d.namespace, "--kubeconfig": d.kubeconfig} {
			if v != "" {
				return fmt.Errorf("%s is for discovery and needs --endpoint-selector (the engines are given with --endpoints)", name)
			}
		}
		return nil
	case d.ports == "":
		return errors.New("--endpoint-selector needs --endpoint-target-ports: the engines' ports on their pods, e.g. 8000")
	}
	if _, err := discovery.ParseSelector(d.selector); err != nil {
		return fmt.Errorf("--endpoint-selector: %w", err)
	}
	if _, err := discovery.ParsePorts(d.ports); err != nil {
		return fmt.Errorf("--endpoint-target-ports: %w", err)
	}
	return nil
}

// start watches the selected pods and keeps r's endpoints to the ready ones; it returns
// once the first list is applied. It returns nil without --endpoint-selector.
func (d *discoveryFlags) start(ctx context.Context, r *router.Router, logf func(string, ...any)) (*discovery.Watcher, error) {
	if d.selector == "" {
		return nil, nil
	}
	sel, err := discovery.ParseSelector(d.selector)
	if err != nil {
		return nil, fmt.Errorf("--endpoint-selector: %w", err)
	}
	ports, err := discovery.ParsePorts(d.ports)
	if err != nil {
		return nil, fmt.Errorf("--endpoint-target-ports: %w", err)
	}
	cfg, ns, err := discovery.Kubeconfig(d.kubeconfig)
	if err != nil {
		return nil, err
	}
	if d.namespace != "" {
		ns = d.namespace
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.syncTimeout)
	defer cancel()
	return discovery.Start(ctx, discovery.Config{Client: cs, Namespace: ns, Selector: sel, TargetPorts: ports, Logf: logf}, r)
}

// describe is the startup line's account of where the endpoints come from.
func (d *discoveryFlags) describe(w *discovery.Watcher, endpoints []string) string {
	if w == nil {
		return fmt.Sprintf("%d endpoints", len(endpoints))
	}
	return fmt.Sprintf("%d endpoints from ready pods %q in namespace %s", len(w.Current()), d.selector, w.Namespace())
}
