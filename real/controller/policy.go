package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"servelab/api/v1alpha1"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/route"
)

// Reasons of a PolicyApplied condition that is False.
const (
	// ReasonInvalidPolicy: spec.router's policy or EndpointPickerConfig, spec.batch or
	// spec.evict does not build (the message names the field and why).
	ReasonInvalidPolicy = "InvalidPolicy"
	// ReasonInvalidArgs: a template's args are not flags of 'servelab engine' / 'servelab router'.
	ReasonInvalidArgs = "InvalidArgs"
	// ReasonInvalidModel: spec.model.uri cannot be mounted.
	ReasonInvalidModel = "InvalidModel"
	// ReasonConfigMapNotFound: spec.router.endpointPickerConfigRef names a ConfigMap that
	// does not exist; ReasonConfigMapKeyNotFound: it has no such key.
	ReasonConfigMapNotFound    = "ConfigMapNotFound"
	ReasonConfigMapKeyNotFound = "ConfigMapKeyNotFound"
	// ReasonResourceExists: an object the controller would create (NAME-engine, ...)
	// exists and belongs to something else; nothing is taken over.
	ReasonResourceExists = "ResourceExists"
	// ReasonApplied: PolicyApplied is True.
	ReasonApplied = "Applied"
)

// policyError is why an LLMService's policies are not deployed.
type policyError struct {
	reason string
	msg    string
}

func (e *policyError) Error() string { return e.reason + ": " + e.msg }

// resolvedPolicy is what the router and engines are deployed with once checked.
type resolvedPolicy struct {
	// routerArg is the router's --router: the policy spec, or the mounted EPC file.
	routerArg string
	// epc is the EndpointPickerConfig document, "" for a policy spec.
	epc string
	// label is status.policy: the spec, or "EndpointPickerConfig".
	label string
	// hash is the router pod template's AnnotationRouterConfigHash.
	hash string
	// blockSize is the engines' --block-size when their args set it, else 0 (the default
	// of both commands); the router hashes prompts into blocks of this size.
	blockSize int
	// disaggregated: spec.prefill is set, so the engines run with roles (--role and llm-d's
	// role label) and the router's policy is a P/D EndpointPickerConfig.
	disaggregated bool
	// engineReplicas is the decode pool's replicas: spec.replicas, or spec.autoscale's
	// decision (set by Reconcile).
	engineReplicas int32
}

// FlagSets give the flag sets of 'servelab engine' and 'servelab router', to check an
// LLMService's template args against them (an unknown flag would crash-loop the pods) and
// read the values that bear on the policies. Nil: a set of just those flags, with the
// commands' defaults, that lets unknown flags pass.
type FlagSets struct {
	Engine func() *pflag.FlagSet
	Router func() *pflag.FlagSet
}

func minimalEngineFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("engine", pflag.ContinueOnError)
	fs.Int("block-size", 16, "")
	fs.Int("max-num-seqs", 0, "")
	fs.Int("max-num-batched-tokens", 0, "")
	fs.ParseErrorsAllowlist.UnknownFlags = true
	return fs
}

func minimalRouterFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("router", pflag.ContinueOnError)
	fs.Uint64("seed", 0, "")
	fs.Int("kv-events-socket-port", 0, "")
	fs.String("kv-events-topic-filter", "", "")
	fs.ParseErrorsAllowlist.UnknownFlags = true
	return fs
}

func stringFlag(fs *pflag.FlagSet, name string) string {
	if f := fs.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

func intFlag(fs *pflag.FlagSet, name string) int {
	f := fs.Lookup(name)
	if f == nil {
		return 0
	}
	v, _ := strconv.Atoi(f.Value.String())
	return v
}

// parseArgs parses a template's args with the command's flag set.
func parseArgs(newFS func() *pflag.FlagSet, fallback func() *pflag.FlagSet, args []string, field string) (*pflag.FlagSet, *policyError) {
	if newFS == nil {
		newFS = fallback
	}
	fs := newFS()
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return nil, &policyError{ReasonInvalidArgs, fmt.Sprintf("%s: %v", field, err)}
	}
	if fs.NArg() > 0 {
		return nil, &policyError{ReasonInvalidArgs, fmt.Sprintf("%s: unexpected argument %q (flags only)", field, fs.Arg(0))}
	}
	return fs, nil
}

// checkEnginePool builds the batch and evict policies an engine of this pool would run, as
// 'servelab engine' builds them from --batch, --evict and its limit flags.
func (r *Reconciler) checkEnginePool(svc *v1alpha1.LLMService, pool v1alpha1.WorkloadSpec, field string) (blockSize int, perr *policyError) {
	fs, perr := parseArgs(r.Flags.Engine, minimalEngineFlags, pool.Template.Args, field+".template.args")
	if perr != nil {
		return 0, perr
	}
	blockSize = intFlag(fs, "block-size")
	env := policies.Env{BlockSize: blockSize}
	if _, err := batch.ParseEngineSpec(svc.Spec.Batch, intFlag(fs, "max-num-seqs"), intFlag(fs, "max-num-batched-tokens"), env); err != nil {
		return 0, &policyError{ReasonInvalidPolicy, fmt.Sprintf("spec.batch %q (with %s.template.args): %v", svc.Spec.Batch, field, err)}
	}
	if _, _, err := evict.Registry.Parse(svc.Spec.Evict, env); err != nil {
		return 0, &policyError{ReasonInvalidPolicy, fmt.Sprintf("spec.evict %q: %v", svc.Spec.Evict, err)}
	}
	if fs.Changed("block-size") {
		return blockSize, nil
	}
	return 0, nil
}

// resolvePolicy checks every policy of svc as the engines and router would build them
// and returns what to deploy. EndpointPickerConfigs from a ConfigMap are read here.
func (r *Reconciler) resolvePolicy(ctx context.Context, svc *v1alpha1.LLMService) (resolvedPolicy, *policyError) {
	if _, err := parseModelURI(svc.Spec.Model.URI); err != nil {
		return resolvedPolicy{}, &policyError{ReasonInvalidModel, err.Error()}
	}
	if svc.Spec.Autoscale != "" {
		if _, perr := parseAutoscale(svc.Spec.Autoscale); perr != nil {
			return resolvedPolicy{}, perr
		}
	}
	blockSize, perr := r.checkEnginePool(svc, svc.Spec.WorkloadSpec, "spec")
	if perr != nil {
		return resolvedPolicy{}, perr
	}
	if p := svc.Spec.Prefill; p != nil {
		pbs, perr := r.checkEnginePool(svc, *p, "spec.prefill")
		if perr != nil {
			return resolvedPolicy{}, perr
		}
		if pbs != blockSize {
			return resolvedPolicy{}, &policyError{ReasonInvalidArgs, fmt.Sprintf("spec.prefill.template.args: --block-size %d differs from spec.template.args' %d: both pools must hash prompts into the same blocks", pbs, blockSize)}
		}
	}
	var routerArgs []string
	if t := svc.Spec.Router.Template; t != nil {
		routerArgs = t.Args
	}
	fs, perr := parseArgs(r.Flags.Router, minimalRouterFlags, routerArgs, "spec.router.template.args")
	if perr != nil {
		return resolvedPolicy{}, perr
	}
	seed, _ := strconv.ParseUint(fs.Lookup("seed").Value.String(), 10, 64)
	env := policies.Env{Seed: seed, BlockSize: blockSize}
	if env.BlockSize == 0 {
		env.BlockSize = 16 // both commands' default --block-size
	}

	rt := svc.Spec.Router
	out := resolvedPolicy{blockSize: blockSize, disaggregated: svc.Spec.Prefill != nil}
	var loaded route.Policy
	switch {
	case rt.EndpointPickerConfig != "":
		pol, err := route.LoadEndpointPickerConfig([]byte(rt.EndpointPickerConfig), env)
		if err != nil {
			return resolvedPolicy{}, &policyError{ReasonInvalidPolicy, fmt.Sprintf("spec.router.endpointPickerConfig: %v", err)}
		}
		if perr := checkRouterKVEvents(fs, rt.EndpointPickerConfig, "spec.router.endpointPickerConfig"); perr != nil {
			return resolvedPolicy{}, perr
		}
		out.epc, loaded = rt.EndpointPickerConfig, pol
	case rt.EndpointPickerConfigRef != nil:
		ref := rt.EndpointPickerConfigRef
		field := fmt.Sprintf("spec.router.endpointPickerConfigRef (ConfigMap %s, key %s)", ref.Name, ref.Key)
		var cm corev1.ConfigMap
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: svc.Namespace, Name: ref.Name}, &cm)
		switch {
		case apierrors.IsNotFound(err):
			return resolvedPolicy{}, &policyError{ReasonConfigMapNotFound, fmt.Sprintf("%s: ConfigMap %s/%s not found", field, svc.Namespace, ref.Name)}
		case err != nil:
			return resolvedPolicy{}, &policyError{"ConfigMapUnreadable", fmt.Sprintf("%s: %v", field, err)}
		}
		doc, ok := cm.Data[ref.Key]
		if !ok {
			return resolvedPolicy{}, &policyError{ReasonConfigMapKeyNotFound, fmt.Sprintf("%s: ConfigMap %s/%s has no key %q", field, svc.Namespace, ref.Name, ref.Key)}
		}
		pol, err := route.LoadEndpointPickerConfig([]byte(doc), env)
		if err != nil {
			return resolvedPolicy{}, &policyError{ReasonInvalidPolicy, fmt.Sprintf("%s: %v", field, err)}
		}
		if perr := checkRouterKVEvents(fs, doc, field); perr != nil {
			return resolvedPolicy{}, perr
		}
		out.epc, loaded = doc, pol
	default:
		spec := rt.Policy
		if spec == "" {
			spec = "round-robin"
		}
		// 'servelab router --router' reads a spec ending in .yaml as a file; here it would
		// be a file of the controller's machine, and of the router's.
		if l := strings.ToLower(spec); strings.HasSuffix(l, ".yaml") || strings.HasSuffix(l, ".yml") {
			return resolvedPolicy{}, &policyError{ReasonInvalidPolicy, fmt.Sprintf("spec.router.policy %q: the router would read it as a file; put an EndpointPickerConfig in spec.router.endpointPickerConfig instead", spec)}
		}
		if _, _, err := route.Registry.Parse(spec, env); err != nil {
			return resolvedPolicy{}, &policyError{ReasonInvalidPolicy, fmt.Sprintf("spec.router.policy %q: %v", spec, err)}
		}
		out.routerArg, out.label = spec, spec
	}
	if _, pd := loaded.(*route.PDProfileHandler); out.disaggregated && !pd {
		// The router sends prompts to prefill engines only under a P/D policy: without one the
		// prefill pool would idle while the decode engines prefill everything.
		return resolvedPolicy{}, &policyError{ReasonInvalidPolicy, "spec.prefill needs a prefill/decode EndpointPickerConfig in spec.router (llm-d's pd-profile-handler or disagg-profile-handler with prefill and decode profiles): without one the router never sends a prompt to the prefill pool"}
	}
	if out.epc != "" {
		out.routerArg, out.label = eppMountDir+"/"+eppKey, "EndpointPickerConfig"
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d", out.routerArg, out.epc, out.blockSize)
	out.hash = hex.EncodeToString(h.Sum(nil))[:16]
	return out, nil
}

// checkRouterKVEvents refuses router args (fs, parsed from spec.router.template.args) whose
// --kv-events-socket-port or --kv-events-topic-filter contradicts the kvEventsConfig of
// the EndpointPickerConfig doc (from field): the router refuses them at start
// (route.KVEventsFlagsAgree, the rule it applies), so its pod would crash-loop.
func checkRouterKVEvents(fs *pflag.FlagSet, doc, field string) *policyError {
	kc, err := route.EndpointPickerKVEvents([]byte(doc))
	if err != nil || kc == nil {
		return nil // none, or LoadEndpointPickerConfig's error, reported before this
	}
	kc.Field = field + ": " + kc.Field
	if err := route.KVEventsFlagsAgree(intFlag(fs, "kv-events-socket-port"), stringFlag(fs, "kv-events-topic-filter"), []*route.KVEventsConfig{kc}); err != nil {
		return &policyError{ReasonInvalidPolicy, fmt.Sprintf("spec.router.template.args: %v", err)}
	}
	return nil
}
