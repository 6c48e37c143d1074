package deploy

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"servelab/api/v1alpha1"
	"servelab/experiments"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/sim"
)

// ServiceOptions are what the experiment does not say: where the service runs and what it
// serves.
type ServiceOptions struct {
	// Name is the LLMService's name; empty means the experiment's name, made a DNS label.
	Name      string
	Namespace string
	// ModelURI is spec.model.uri (file:///PATH or pvc://CLAIM/PATH); empty means the
	// experiment's model directory when it ran in the real world.
	ModelURI string
	// ServedModelName is spec.model.name; empty means the model directory's base name (the
	// engine's own default).
	ServedModelName string
	// Replicas, when not nil, overrides the experiment's cluster.instances.
	Replicas *int32
	// Image is the engines' (and the router's) image; empty leaves the CRD's default.
	Image string
	// Dir is where relative EndpointPickerConfig paths in the experiment's spec resolve
	// besides the experiment directory: the working directory when empty.
	Dir string
}

// Service builds the LLMService that runs the chosen policy: the router policy as
// spec.router.policy (a servelab spec) or spec.router.endpointPickerConfig (an
// EndpointPickerConfig file's contents, inline), the batch and evict specs, the engines'
// KV-cache settings of a real-world experiment as engine flags, the router's scrape
// interval, and spec.source naming the experiment and policy.
func Service(c *Choice, o ServiceOptions) (*v1alpha1.LLMService, error) {
	spec := &c.Experiment.Spec
	p := c.Result
	name := o.Name
	if name == "" {
		name = dnsLabel(spec.Name)
	}
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		return nil, fmt.Errorf("--name %q: %s", name, strings.Join(errs, "; "))
	}
	if len(name) > MaxNameLength {
		return nil, fmt.Errorf("--name %q: at most %d characters: the controller names its objects NAME-engine, NAME-router, ...", name, MaxNameLength)
	}
	if o.Namespace != "" {
		if errs := validation.IsDNS1123Label(o.Namespace); len(errs) > 0 {
			return nil, fmt.Errorf("--namespace %q: %s", o.Namespace, strings.Join(errs, "; "))
		}
	}
	// The cluster the chosen cell ran on (an experiment may compare several).
	k := spec.ClusterNamed(p.Cluster)
	model, err := modelSpec(spec.World, k.Model, o)
	if err != nil {
		return nil, err
	}
	replicas, prefill := int32(k.Instances), int32(0)
	for _, pool := range k.Pools {
		if pool.Role == sim.RolePrefill {
			prefill += int32(pool.Instances)
		} else {
			replicas += int32(pool.Instances)
		}
	}
	if replicas == 0 {
		replicas = int32(sim.DefaultClusterSpec().Instances)
	}
	if o.Replicas != nil {
		if *o.Replicas < 0 {
			return nil, fmt.Errorf("--replicas: must not be negative, got %d", *o.Replicas)
		}
		replicas = *o.Replicas
	}
	svc := &v1alpha1.LLMService{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "LLMService"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace},
		Spec: v1alpha1.LLMServiceSpec{
			Model:  model,
			Batch:  p.Batch,
			Evict:  p.Evict,
			Source: &v1alpha1.PolicySource{Experiment: spec.Name, Policy: c.Label},
		},
	}
	svc.Spec.Replicas = &replicas
	pol, err := routerPolicy(&svc.Spec.Router, p.Router, []string{c.Experiment.Dir, o.Dir}, policies.Env{BlockSize: deployedBlockSize(spec.World, k)})
	if err != nil {
		return nil, err
	}
	if prefill > 0 {
		// A disaggregated cell: its prefill pool becomes spec.prefill, which the controller
		// runs only under a P/D EndpointPickerConfig (the router runs both legs).
		if _, pd := pol.(*route.PDProfileHandler); !pd {
			return nil, fmt.Errorf("%s ran disaggregated (%d prefill instances) with router %q and prefill_router %q: a deployed router runs prefill/decode only from a P/D EndpointPickerConfig (llm-d's pd-profile-handler, e.g. examples/router/llm-d-pd.yaml); give the experiment's router as such a file",
				c.Label, prefill, p.Router, k.PrefillRouter)
		}
		svc.Spec.Prefill = &v1alpha1.WorkloadSpec{Replicas: &prefill}
		svc.Spec.Prefill.Template.Image = o.Image
		svc.Spec.Prefill.Template.Args = engineArgs(spec.World, k)
	}
	if s := k.ScrapeInterval; s != nil && *s > 0 {
		svc.Spec.Router.ScrapeInterval = &metav1.Duration{Duration: time.Duration(*s * float64(time.Second))}
	}
	svc.Spec.Template.Image = o.Image
	// The controller gives the router the engines' --block-size (it hashes prompts in their
	// blocks).
	svc.Spec.Template.Args = engineArgs(spec.World, k)
	return svc, nil
}

// defaultBlockSize is the --block-size default of 'servelab engine' and 'servelab router'.
const defaultBlockSize = 16

// deployedBlockSize is the --block-size the deployed engines run with (engineArgs gives
// it to them, and the controller to the router): a real-world experiment's, else the
// default.
func deployedBlockSize(world string, k experiments.Cluster) int {
	if world == "real" && k.BlockSize != 0 {
		return k.BlockSize
	}
	return defaultBlockSize
}

// engineArgs are the engine flags a real-world experiment's cluster set: its engines ran
// with them, so the deployed ones do too. A simulated cluster's GPU, TP and memory are the
// simulator's model of hardware, not flags of the CPU engine.
func engineArgs(world string, k experiments.Cluster) []string {
	if world != "real" {
		return nil
	}
	var args []string
	if k.BlockSize != 0 && k.BlockSize != defaultBlockSize {
		args = append(args, "--block-size="+strconv.Itoa(k.BlockSize))
	}
	if k.NumGPUBlocksOverride > 0 {
		args = append(args, "--num-gpu-blocks-override="+strconv.Itoa(k.NumGPUBlocksOverride))
	}
	if k.MaxModelLen > 0 {
		args = append(args, "--max-model-len="+strconv.Itoa(k.MaxModelLen))
	}
	if k.EnablePrefixCaching != nil && !*k.EnablePrefixCaching {
		args = append(args, "--enable-prefix-caching=false")
	}
	return args
}

// modelSpec is spec.model: the URI given, or a real-world experiment's model directory.
func modelSpec(world, expModel string, o ServiceOptions) (v1alpha1.ModelSpec, error) {
	uri := o.ModelURI
	if uri == "" {
		if world != "real" || !filepath.IsAbs(expModel) {
			return v1alpha1.ModelSpec{}, fmt.Errorf("--model-uri: required: the experiment ran the simulator's %q, not a model directory; give file:///PATH (a directory on the node) or pvc://CLAIM/PATH", expModel)
		}
		uri = "file://" + filepath.ToSlash(expModel)
	}
	u, err := url.Parse(uri)
	if err != nil {
		return v1alpha1.ModelSpec{}, fmt.Errorf("--model-uri %q: %w", uri, err)
	}
	var dir string
	switch {
	case u.Scheme == "file" && u.Host == "" && strings.HasPrefix(u.Path, "/") && strings.HasPrefix(uri, "file:///"):
		dir = u.Path
	case u.Scheme == "pvc" && u.Host != "" && len(validation.IsDNS1123Subdomain(u.Host)) == 0:
		dir = u.Path
		if dir == "" {
			dir = u.Host
		}
	default:
		return v1alpha1.ModelSpec{}, fmt.Errorf("--model-uri %q: want file:///PATH (a directory on the node) or pvc://CLAIM/PATH (a claim named as Kubernetes names it)", uri)
	}
	if strings.ContainsAny(uri, " \t\n") {
		return v1alpha1.ModelSpec{}, fmt.Errorf("--model-uri %q: no whitespace allowed", uri)
	}
	name := o.ServedModelName
	if name == "" {
		name = path.Base(strings.TrimSuffix(dir, "/"))
		if name == "/" || name == "." || name == "" {
			return v1alpha1.ModelSpec{}, fmt.Errorf("--served-model-name: required: %q names no directory to take it from", uri)
		}
	}
	if name == "" || strings.ContainsAny(name, " \t\n") {
		return v1alpha1.ModelSpec{}, fmt.Errorf("--served-model-name %q: want a name without whitespace", name)
	}
	return v1alpha1.ModelSpec{Name: name, URI: uri}, nil
}

// routerPolicy sets the router's policy from the experiment's router spec: a servelab
// policy spec, or a YAML file holding one (rendered compact) or an EndpointPickerConfig
// (inlined). A relative file resolves against dirs, in order. An EndpointPickerConfig is
// loaded as the controller loads it (route.LoadEndpointPickerConfig, with env the deployed
// engines' block size), so a file that changed since the experiment ran, and that the
// controller and router would refuse (two kvEventsConfigs, say), is refused here, naming
// the file, instead of after it is applied; its policy is returned (nil for a spec).
func routerPolicy(r *v1alpha1.RouterSpec, router string, dirs []string, env policies.Env) (route.Policy, error) {
	lower := strings.ToLower(strings.TrimSpace(router))
	if !strings.HasSuffix(lower, ".yaml") && !strings.HasSuffix(lower, ".yml") {
		r.Policy = strings.TrimSpace(router)
		return nil, nil
	}
	file, tried := router, []string{}
	if !filepath.IsAbs(router) {
		file = ""
		for _, d := range dirs {
			if d == "" {
				d = "."
			}
			p := filepath.Join(d, router)
			tried = append(tried, d)
			if _, err := os.Stat(p); err == nil {
				file = p
				break
			}
		}
	}
	if file == "" {
		return nil, fmt.Errorf("router %q: the experiment's policy file is not in %s; run 'servelab deploy' from the directory the spec named it from, or give --policy-dir DIR",
			router, strings.Join(tried, " nor "))
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("router %q: %w", router, err)
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(data, &head); err == nil && (head.APIVersion != "" || head.Kind != "") {
		pol, err := route.LoadEndpointPickerConfig(data, env)
		if err != nil {
			return nil, fmt.Errorf("router %q: %s: %w", router, file, err)
		}
		r.EndpointPickerConfig = string(data)
		return pol, nil
	}
	s, err := policies.ParseYAMLSpec(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	r.Policy = s.String()
	return nil, nil
}

// MaxNameLength is the longest LLMService name the API takes: Services are named
// NAME-engine, NAME-router, ..., DNS labels of at most 63 characters.
const MaxNameLength = 56

// dnsLabel makes an experiment's name a DNS-1035 label: lower case, letters, digits and
// '-', starting with a letter, at most MaxNameLength characters.
func dnsLabel(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	out := strings.Trim(b.String(), "-")
	for strings.Contains(out, "--") {
		out = strings.ReplaceAll(out, "--", "-")
	}
	switch {
	case out == "":
		out = "llm"
	case out[0] < 'a' || out[0] > 'z':
		out = "llm-" + out
	}
	if len(out) > MaxNameLength {
		out = strings.TrimRight(out[:MaxNameLength], "-")
	}
	return out
}
