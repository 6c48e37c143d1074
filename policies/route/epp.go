package route

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"servelab/policies"
)

// EndpointPickerConfig's apiVersion and kind, as GIE defines them.
const (
	EPPAPIVersion = "inference.networking.x-k8s.io/v1alpha1"
	EPPKind       = "EndpointPickerConfig"
)

// SingleProfileHandlerType is GIE's profile handler for one scheduling profile, the only
// one this loader accepts; it changes nothing in a single-profile decision.
const SingleProfileHandlerType = "single-profile-handler"

// eppConfig is the part of GIE's EndpointPickerConfig (apix/config/v1alpha1) that bears
// on picking one endpoint. Fields GIE has but that do not apply here (saturationDetector,
// data, flowControl, parser) are unknown fields, hence errors; featureGates switch
// experimental EPP machinery, not scoring, and are accepted and ignored.
type eppConfig struct {
	APIVersion         string       `json:"apiVersion"`
	Kind               string       `json:"kind"`
	FeatureGates       []string     `json:"featureGates,omitempty"`
	Plugins            []eppPlugin  `json:"plugins"`
	SchedulingProfiles []eppProfile `json:"schedulingProfiles"`
}

type eppPlugin struct {
	Name       string          `json:"name,omitempty"`
	Type       string          `json:"type"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
}

type eppProfile struct {
	Name    string             `json:"name"`
	Plugins []eppProfilePlugin `json:"plugins"`
}

type eppProfilePlugin struct {
	PluginRef string   `json:"pluginRef"`
	Weight    *float64 `json:"weight,omitempty"`
}

// eppInstance is a plugin built from the plugins section.
type eppInstance struct {
	typ     string
	scorer  scorer // set for scorers
	picker  bool
	filter  *RoleFilter           // set for role filters
	decider *PrefixBasedPDDecider // set for P/D deciders
	handler *pdHandlerParams      // set for P/D profile handlers
}

// pdHandlerParams is a pd-profile-handler's (or disagg-profile-handler's) resolved
// parameters; field is its plugins[i], deciderField the parameter naming its decider.
type pdHandlerParams struct {
	typ, field                    string
	decodeProfile, prefillProfile string
	decider, deciderField         string
}

// P/D plugin types of llm-d besides pd.go's: disagg-profile-handler is llm-d's current
// name for the pd-profile-handler (pkg/epp/framework/plugins/scheduling/profilehandler/
// disagg/disagg_profile_handler.go), always-disagg-pd-decider its decider that
// disaggregates every request, and the header handlers are the EPP plugins that hand the
// prefill endpoint to llm-d's routing sidecar, whose two legs this router runs itself.
const (
	DisaggProfileHandlerType  = "disagg-profile-handler"
	AlwaysDisaggPDDeciderType = "always-disagg-pd-decider"
	PrefillHeaderHandlerType  = "prefill-header-handler"
	DisaggHeadersHandlerType  = "disagg-headers-handler"
)

// LLMDAPIVersion is the apiVersion llm-d's own configurations carry since it moved the
// configuration's group to llm-d.ai; the fields are GIE's.
const LLMDAPIVersion = "llm-d.ai/v1alpha1"

// LoadEndpointPickerConfig builds the weighted policy an llm-d / GIE EndpointPickerConfig
// describes: its plugins (scorers, a picker, a single-profile-handler) and exactly one
// scheduling profile whose pluginRefs carry the scorers' weights. As in GIE, a plugin's
// name defaults to its type, a scorer without a weight weighs 1, a profile without a
// picker uses max-score-picker, and a config without profiles gets one holding every
// scorer and picker. Unknown fields, unknown plugin types, filters, several profiles and
// bad weights are errors that name the field.
//
// prefix-cache-scorer block sizes: servelab's prefix index hashes whole engine blocks
// (Request.BlockHashes at Env.BlockSize), not the prompt's characters. With autoTune
// (GIE's default) GIE takes the block size from the model server, so the index block is
// the engine block and any configured size is only checked to be positive. With
// autoTune: false, blockSizeTokens (or the deprecated character sizes blockSize and
// hashBlockSize, read at GIE's own 4 characters per token) must be a whole multiple of
// the engine block size; that many engine blocks form one index block (keyed by the
// chained hash of the last, which covers the prefix). Other sizes are rejected, since
// matching cannot end inside an engine block.
func LoadEndpointPickerConfig(data []byte, env policies.Env) (Policy, error) {
	var cfg eppConfig
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("EndpointPickerConfig: %w", err)
	}
	if cfg.APIVersion != EPPAPIVersion && cfg.APIVersion != LLMDAPIVersion {
		return nil, fmt.Errorf("EndpointPickerConfig: apiVersion: got %q, want %q or %q", cfg.APIVersion, EPPAPIVersion, LLMDAPIVersion)
	}
	if cfg.Kind != EPPKind {
		return nil, fmt.Errorf("EndpointPickerConfig: kind: got %q, want %q", cfg.Kind, EPPKind)
	}
	if len(cfg.Plugins) == 0 {
		return nil, fmt.Errorf("EndpointPickerConfig: plugins: no plugins given")
	}

	built := map[string]*eppInstance{}
	var names []string // plugins in configuration order, for a deterministic default profile
	for i, pl := range cfg.Plugins {
		name := pl.Name
		if name == "" {
			name = pl.Type
		}
		field := fmt.Sprintf("plugins[%d]", i)
		if _, dup := built[name]; dup {
			return nil, fmt.Errorf("EndpointPickerConfig: %s.name: plugin name %q used twice", field, name)
		}
		inst, err := buildEPPPlugin(pl, field, env)
		if err != nil {
			return nil, fmt.Errorf("EndpointPickerConfig: %w", err)
		}
		built[name] = inst
		names = append(names, name)
	}
	// Each plugin's kvEventsConfig is checked above; that there is at most one is the
	// router's rule for the file, checked here so that whoever accepts a configuration
	// through this loader (the controller, deploy) refuses what the router refuses. The
	// error is the router's own, word for word (EndpointPickerKVEvents), so a file is
	// refused alike wherever it is read.
	if _, err := pluginsKVEvents(cfg.Plugins); err != nil {
		return nil, err
	}

	var handler *pdHandlerParams
	for _, name := range names {
		if h := built[name].handler; h != nil {
			if handler != nil {
				return nil, fmt.Errorf("EndpointPickerConfig: %s.type: a second profile handler; a configuration has one", h.field)
			}
			handler = h
		}
	}
	if handler != nil {
		pd, err := buildPD(cfg, built, handler, env)
		if err != nil {
			return nil, fmt.Errorf("EndpointPickerConfig: %w", err)
		}
		return pd, nil
	}

	for i, name := range names {
		if b := built[name]; b.filter != nil || b.decider != nil {
			return nil, fmt.Errorf("EndpointPickerConfig: plugins[%d].type: %s is a P/D plugin; it needs a %s (or %s) with decode and prefill profiles",
				i, b.typ, PDProfileHandlerType, DisaggProfileHandlerType)
		}
	}
	var profile eppProfile
	switch len(cfg.SchedulingProfiles) {
	case 0:
		for _, name := range names {
			if b := built[name]; b.scorer != nil || b.picker {
				profile.Plugins = append(profile.Plugins, eppProfilePlugin{PluginRef: name})
			}
		}
	case 1:
		profile = cfg.SchedulingProfiles[0]
	default:
		return nil, fmt.Errorf("EndpointPickerConfig: schedulingProfiles: %d profiles given; several profiles need a %s (or %s) plugin, which runs a decode and a prefill profile",
			len(cfg.SchedulingProfiles), PDProfileHandlerType, DisaggProfileHandlerType)
	}
	w, _, err := buildProfile(profile, "schedulingProfiles[0]", built, false, env)
	if err != nil {
		return nil, fmt.Errorf("EndpointPickerConfig: %w", err)
	}
	return w, nil
}

// buildProfile builds one scheduling profile: its scorers' weighted policy and, where
// filters are allowed (a P/D configuration), its role filter. field names it in errors.
func buildProfile(profile eppProfile, field string, built map[string]*eppInstance, filters bool, env policies.Env) (*Weighted, *RoleFilter, error) {
	var scorers []weightedScorer
	var filter *RoleFilter
	picker := ""
	seen := map[string]bool{}
	for j, ref := range profile.Plugins {
		field := fmt.Sprintf("%s.plugins[%d]", field, j)
		b, ok := built[ref.PluginRef]
		switch {
		case ref.PluginRef == "":
			return nil, nil, fmt.Errorf("%s.pluginRef: missing", field)
		case !ok:
			return nil, nil, fmt.Errorf("%s.pluginRef: no plugin named %q", field, ref.PluginRef)
		case seen[ref.PluginRef]:
			return nil, nil, fmt.Errorf("%s.pluginRef: %q referenced twice", field, ref.PluginRef)
		}
		seen[ref.PluginRef] = true
		if b.scorer == nil && ref.Weight != nil {
			return nil, nil, fmt.Errorf("%s.weight: %q is a %s, not a scorer; only scorers take a weight", field, ref.PluginRef, b.typ)
		}
		switch {
		case b.picker:
			if picker != "" {
				return nil, nil, fmt.Errorf("%s.pluginRef: a second picker %q; a profile has one picker", field, ref.PluginRef)
			}
			picker = b.typ
		case b.scorer != nil:
			weight := 1.0 // GIE's DefaultScorerWeight
			if ref.Weight != nil {
				weight = *ref.Weight
			}
			if !(weight >= 0) || math.IsInf(weight, 0) {
				return nil, nil, fmt.Errorf("%s.weight: %v is not a non-negative finite number", field, weight)
			}
			if weight > 0 {
				scorers = append(scorers, weightedScorer{typ: b.typ, name: ref.PluginRef, scorer: b.scorer, weight: weight})
			}
		case b.filter != nil && filters:
			if filter != nil {
				return nil, nil, fmt.Errorf("%s.pluginRef: a second role filter %q; a profile here has at most one", field, ref.PluginRef)
			}
			filter = b.filter
		case b.filter != nil:
			return nil, nil, fmt.Errorf("%s.pluginRef: %q is a %s; role filters need a %s with prefill and decode profiles", field, ref.PluginRef, b.typ, PDProfileHandlerType)
		default:
			return nil, nil, fmt.Errorf("%s.pluginRef: %q is a %s, which does not belong in a scheduling profile", field, ref.PluginRef, b.typ)
		}
	}
	if picker == "" {
		picker = MaxScorePickerType
	}
	return newWeighted(scorers, picker, env), filter, nil
}

// buildPD builds a P/D configuration: the handler's decode and prefill profiles, each its
// own scorers and role filter, and its decider, as llm-d's pd-profile-handler runs them.
// Every profile must be one of the two.
func buildPD(cfg eppConfig, built map[string]*eppInstance, h *pdHandlerParams, env policies.Env) (*PDProfileHandler, error) {
	idx := map[string]int{}
	for i, p := range cfg.SchedulingProfiles {
		field := fmt.Sprintf("schedulingProfiles[%d].name", i)
		switch {
		case p.Name == "":
			return nil, fmt.Errorf("%s: missing", field)
		case p.Name != h.decodeProfile && p.Name != h.prefillProfile:
			return nil, fmt.Errorf("%s: %q is neither the decode profile %q nor the prefill profile %q of %s", field, p.Name, h.decodeProfile, h.prefillProfile, h.typ)
		}
		if _, dup := idx[p.Name]; dup {
			return nil, fmt.Errorf("%s: profile %q given twice", field, p.Name)
		}
		idx[p.Name] = i
	}
	out := &PDProfileHandler{BlockSize: env.BlockSize}
	for _, side := range []struct {
		name, what string
		policy     *Policy
		filter     **RoleFilter
	}{{h.decodeProfile, "decode", &out.Decode, &out.DecodeFilter}, {h.prefillProfile, "prefill", &out.Prefill, &out.PrefillFilter}} {
		i, ok := idx[side.name]
		if !ok {
			return nil, fmt.Errorf("schedulingProfiles: no profile named %q, the %s's %s profile", side.name, h.typ, side.what)
		}
		field := fmt.Sprintf("schedulingProfiles[%d]", i)
		w, f, err := buildProfile(cfg.SchedulingProfiles[i], field, built, true, env)
		if err != nil {
			return nil, err
		}
		*side.policy, *side.filter = w, f
	}
	d, ok := built[h.decider]
	switch {
	case !ok:
		return nil, fmt.Errorf("%s.%s: no plugin named %q", h.field+".parameters", h.deciderField, h.decider)
	case d.decider == nil:
		return nil, fmt.Errorf("%s.%s: %q is a %s, not a P/D decider (%s, %s)", h.field+".parameters", h.deciderField, h.decider, d.typ, PrefixBasedPDDeciderType, AlwaysDisaggPDDeciderType)
	}
	out.Decider = *d.decider
	return out, nil
}

// buildEPPPlugin builds one entry of the plugins section; field names it in errors.
func buildEPPPlugin(pl eppPlugin, field string, env policies.Env) (*eppInstance, error) {
	params := field + ".parameters"
	inst := &eppInstance{typ: pl.Type}
	switch pl.Type {
	case PrefixCacheScorerType:
		x, err := prefixIndexFromEPP(pl.Parameters, params, env)
		if err != nil {
			return nil, err
		}
		inst.scorer = &prefixCacheScorer{index: x}
	case QueueScorerType:
		inst.scorer = queueScorer{}
		return inst, noParams(pl, params)
	case KVCacheUtilizationScorerType:
		inst.scorer = kvCacheUtilizationScorer{}
		return inst, noParams(pl, params)
	case LoadAwareScorerType:
		var p struct {
			Threshold *int `json:"threshold"`
		}
		if err := decodeParams(pl.Parameters, &p, params); err != nil {
			return nil, err
		}
		t := DefaultLoadAwareThreshold
		if p.Threshold != nil {
			if t = *p.Threshold; t <= 0 {
				return nil, fmt.Errorf("%s.threshold: %d is not a positive queue length", params, t)
			}
		}
		inst.scorer = &loadAwareScorer{threshold: float64(t)}
	case ActiveRequestScorerType:
		var p struct {
			RequestTimeout string `json:"requestTimeout"`
		}
		if err := decodeParams(pl.Parameters, &p, params); err != nil {
			return nil, err
		}
		// The timeout only expires entries of llm-d's own request table, which the view's
		// engine counts replace here; it is still checked so a typo is reported.
		if p.RequestTimeout != "" {
			if d, err := time.ParseDuration(p.RequestTimeout); err != nil || d <= 0 {
				return nil, fmt.Errorf("%s.requestTimeout: %q is not a positive duration", params, p.RequestTimeout)
			}
		}
		inst.scorer = activeRequestScorer{}
	case PrecisePrefixCacheScorerType:
		if err := checkPreciseParams(pl.Parameters, params, env); err != nil {
			return nil, err
		}
		inst.scorer = precisePrefixCacheScorer{}
	case PredictedLatencyScorerType:
		cfg, err := predictedLatencyFromEPP(pl.Parameters, params, env)
		if err != nil {
			return nil, err
		}
		inst.scorer = newPredictedLatencyScorer(cfg, env)
	case MaxScorePickerType, RandomPickerType, WeightedRandomPickerType:
		var p struct {
			MaxNumOfEndpoints *int `json:"maxNumOfEndpoints"`
		}
		if err := decodeParams(pl.Parameters, &p, params); err != nil {
			return nil, err
		}
		if p.MaxNumOfEndpoints != nil && *p.MaxNumOfEndpoints != 1 {
			return nil, fmt.Errorf("%s.maxNumOfEndpoints: %d; a route picks exactly 1 endpoint", params, *p.MaxNumOfEndpoints)
		}
		inst.picker = true
	case SingleProfileHandlerType, PrefillHeaderHandlerType, DisaggHeadersHandlerType:
		return inst, noParams(pl, params)
	case PDProfileHandlerType, DisaggProfileHandlerType:
		h, err := pdHandlerFromEPP(pl, field)
		if err != nil {
			return nil, err
		}
		inst.handler = h
	case PrefixBasedPDDeciderType:
		var p struct {
			NonCachedTokens *int `json:"nonCachedTokens"`
		}
		if err := decodeParams(pl.Parameters, &p, params); err != nil {
			return nil, err
		}
		// llm-d's factory default, 0, disables disaggregation (prefix_based_pd_decider.go:
		// "A value of 0 disables disaggregation"), where servelab's decider reads 0 as
		// "every request"; a file must say which it means.
		switch {
		case p.NonCachedTokens == nil:
			return nil, fmt.Errorf("%s.nonCachedTokens: missing; llm-d's default 0 disables disaggregation: give a threshold (llm-d's guides use %d), or use %s to disaggregate every request",
				params, DefaultNonCachedTokens, AlwaysDisaggPDDeciderType)
		case *p.NonCachedTokens <= 0:
			return nil, fmt.Errorf("%s.nonCachedTokens: %d; 0 disables disaggregation in llm-d and negative values are invalid: give a positive threshold, or use %s to disaggregate every request",
				params, *p.NonCachedTokens, AlwaysDisaggPDDeciderType)
		}
		inst.decider = &PrefixBasedPDDecider{NonCachedTokens: *p.NonCachedTokens}
	case AlwaysDisaggPDDeciderType:
		inst.decider = &PrefixBasedPDDecider{NonCachedTokens: 0} // 0: every request
		return inst, noParams(pl, params)
	case PrefillFilterType:
		inst.filter = PrefillRoleFilter()
		return inst, noParams(pl, params)
	case DecodeFilterType:
		inst.filter = DecodeRoleFilter()
		return inst, noParams(pl, params)
	case ByLabelFilterType:
		f, err := roleFilterFromEPP(pl, params)
		if err != nil {
			return nil, err
		}
		inst.filter = f
	case "":
		return nil, fmt.Errorf("%s.type: missing", field)
	default:
		return nil, fmt.Errorf("%s.type: unknown plugin type %q (supported: %s)", field, pl.Type, strings.Join(eppTypes(), ", "))
	}
	return inst, nil
}

func eppTypes() []string {
	t := append([]string{}, scorerTypes...)
	t = append(t, pickerTypes...)
	return append(t, SingleProfileHandlerType, PDProfileHandlerType, DisaggProfileHandlerType, PrefixBasedPDDeciderType,
		AlwaysDisaggPDDeciderType, PrefillFilterType, DecodeFilterType, ByLabelFilterType, PrefillHeaderHandlerType, DisaggHeadersHandlerType)
}

// pdHandlerFromEPP reads a pd-profile-handler's parameters (llm-d's
// pdProfileHandlerParameters: decodeProfile, prefillProfile, deciderPluginName, and
// prefixPluginType, prefixPluginName and primaryPort, which only concern llm-d's own
// plumbing) or a disagg-profile-handler's (profiles and deciders, or the same flat names,
// not both). Profile names default to decode and prefill; pd-profile-handler's decider to
// prefix-based-pd-decider, as in llm-d. Encode stages are not supported.
func pdHandlerFromEPP(pl eppPlugin, field string) (*pdHandlerParams, error) {
	params := field + ".parameters"
	h := &pdHandlerParams{typ: pl.Type, field: field, decodeProfile: "decode", prefillProfile: "prefill"}
	type flat struct {
		DecodeProfile            string `json:"decodeProfile"`
		PrefillProfile           string `json:"prefillProfile"`
		DeciderPluginName        string `json:"deciderPluginName"`
		PrefixPluginType         string `json:"prefixPluginType"`
		PrefixPluginName         string `json:"prefixPluginName"`
		PrimaryPort              int    `json:"primaryPort"`
		EncodeProfile            string `json:"encodeProfile"`
		PrefillDeciderPluginName string `json:"prefillDeciderPluginName"`
		EncodeDeciderPluginName  string `json:"encodeDeciderPluginName"`
	}
	var p struct {
		flat
		Profiles *struct {
			Decode  string `json:"decode"`
			Prefill string `json:"prefill"`
			Encode  string `json:"encode"`
		} `json:"profiles"`
		Deciders *struct {
			Prefill string `json:"prefill"`
			Encode  string `json:"encode"`
		} `json:"deciders"`
	}
	if err := decodeParams(pl.Parameters, &p, params); err != nil {
		return nil, err
	}
	if pl.Type == PDProfileHandlerType {
		// pd-profile-handler has only the flat names of its own.
		switch {
		case p.Profiles != nil:
			return nil, fmt.Errorf("%s.profiles: a %s parameter; %s names its profiles decodeProfile and prefillProfile", params, DisaggProfileHandlerType, pl.Type)
		case p.Deciders != nil:
			return nil, fmt.Errorf("%s.deciders: a %s parameter; %s names its decider deciderPluginName", params, DisaggProfileHandlerType, pl.Type)
		case p.EncodeProfile != "" || p.PrefillDeciderPluginName != "" || p.EncodeDeciderPluginName != "":
			return nil, fmt.Errorf("%s: encodeProfile, prefillDeciderPluginName and encodeDeciderPluginName are %s parameters", params, DisaggProfileHandlerType)
		}
		if p.PrimaryPort != 0 && (p.PrimaryPort < 1 || p.PrimaryPort > 65535) {
			return nil, fmt.Errorf("%s.primaryPort: %d is not a port", params, p.PrimaryPort)
		}
		h.decider, h.deciderField = PrefixBasedPDDeciderType, "deciderPluginName"
	} else {
		switch {
		case p.PrefixPluginType != "" || p.PrefixPluginName != "" || p.PrimaryPort != 0:
			return nil, fmt.Errorf("%s: prefixPluginType, prefixPluginName and primaryPort are %s parameters", params, PDProfileHandlerType)
		case (p.Profiles != nil || p.Deciders != nil) && p.flat != flat{}:
			return nil, fmt.Errorf("%s: the flat parameters (decodeProfile, prefillProfile, deciderPluginName, ...) and the nested ones (profiles, deciders) are mixed; use one form, as llm-d requires", params)
		case p.Profiles != nil && p.Profiles.Encode != "" || p.Deciders != nil && p.Deciders.Encode != "" || p.EncodeProfile != "" || p.EncodeDeciderPluginName != "":
			return nil, fmt.Errorf("%s: an encode stage is configured; servelab disaggregates prefill and decode only", params)
		}
		h.deciderField = "deciders.prefill"
		if p.Deciders != nil {
			h.decider = p.Deciders.Prefill
		}
		if p.PrefillDeciderPluginName != "" {
			h.decider, h.deciderField = p.PrefillDeciderPluginName, "prefillDeciderPluginName"
		}
		if p.DeciderPluginName != "" && h.decider == "" {
			h.decider, h.deciderField = p.DeciderPluginName, "deciderPluginName"
		}
		if h.decider == "" {
			// llm-d then never disaggregates; a P/D router without a decider is a mistake here.
			return nil, fmt.Errorf("%s.deciders.prefill: missing; name the P/D decider plugin (e.g. %s)", params, PrefixBasedPDDeciderType)
		}
		if p.Profiles != nil {
			p.DecodeProfile, p.PrefillProfile = p.Profiles.Decode, p.Profiles.Prefill
		}
	}
	if p.DecodeProfile != "" {
		h.decodeProfile = p.DecodeProfile
	}
	if p.PrefillProfile != "" {
		h.prefillProfile = p.PrefillProfile
	}
	if p.DeciderPluginName != "" && pl.Type == PDProfileHandlerType {
		h.decider = p.DeciderPluginName
	}
	if h.decodeProfile == h.prefillProfile {
		return nil, fmt.Errorf("%s: the decode and prefill profiles are both %q", params, h.decodeProfile)
	}
	return h, nil
}

// roleFilterFromEPP reads llm-d's by-label filter, which servelab supports on the role
// label alone.
func roleFilterFromEPP(pl eppPlugin, params string) (*RoleFilter, error) {
	var p struct {
		Label         string   `json:"label"`
		ValidValues   []string `json:"validValues"`
		AllowsNoLabel bool     `json:"allowsNoLabel"`
	}
	if err := decodeParams(pl.Parameters, &p, params); err != nil {
		return nil, err
	}
	if p.Label != RoleLabel {
		return nil, fmt.Errorf("%s.label: %q; servelab's endpoints carry only the role label %q", params, p.Label, RoleLabel)
	}
	if len(p.ValidValues) == 0 && !p.AllowsNoLabel {
		return nil, fmt.Errorf("%s.validValues: empty and allowsNoLabel false, so no endpoint would pass", params)
	}
	for i, v := range p.ValidValues {
		if !slices.Contains(Roles, v) {
			return nil, fmt.Errorf("%s.validValues[%d]: %q is not a role (%s)", params, i, v, strings.Join(Roles, ", "))
		}
	}
	name := pl.Name
	if name == "" {
		name = pl.Type
	}
	return &RoleFilter{Name: name, Values: p.ValidValues, AllowsNoLabel: p.AllowsNoLabel}, nil
}

// decodeParams reads a plugin's parameters strictly: unknown keys are errors.
func decodeParams(raw json.RawMessage, into any, field string) error {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

func noParams(pl eppPlugin, field string) error {
	var none struct{}
	if err := decodeParams(pl.Parameters, &none, field); err != nil {
		return fmt.Errorf("%s takes no parameters: %w", pl.Type, err)
	}
	return nil
}

// prefixCacheParams are GIE's prefix-cache-scorer parameters across its versions.
type prefixCacheParams struct {
	AutoTune        *bool `json:"autoTune"`
	BlockSizeTokens *int  `json:"blockSizeTokens"`
	// BlockSize (deprecated) and HashBlockSize (older releases) are in prompt characters.
	BlockSize              *int `json:"blockSize"`
	HashBlockSize          *int `json:"hashBlockSize"`
	MaxPrefixBlocksToMatch *int `json:"maxPrefixBlocksToMatch"`
	MaxPrefixTokensToMatch *int `json:"maxPrefixTokensToMatch"`
	LRUCapacityPerServer   *int `json:"lruCapacityPerServer"`
}

// gieCharsPerToken is GIE's averageCharactersPerToken, by which it relates its character
// block sizes to vLLM's token blocks (64 characters for vLLM's 16 tokens).
const gieCharsPerToken = 4

func prefixIndexFromEPP(raw json.RawMessage, field string, env policies.Env) (*PrefixIndex, error) {
	var p prefixCacheParams
	if err := decodeParams(raw, &p, field); err != nil {
		return nil, err
	}
	autoTune := p.AutoTune == nil || *p.AutoTune

	// The configured block size in tokens and the field it came from; GIE prefers
	// blockSizeTokens over the character sizes.
	sizeField, tokens, chars := "", 0, 0
	switch {
	case p.BlockSizeTokens != nil:
		sizeField, tokens = "blockSizeTokens", *p.BlockSizeTokens
	case p.BlockSize != nil:
		sizeField, chars = "blockSize", *p.BlockSize
	case p.HashBlockSize != nil:
		sizeField, chars = "hashBlockSize", *p.HashBlockSize
	}
	if sizeField != "" {
		if tokens <= 0 && chars <= 0 {
			return nil, fmt.Errorf("%s.%s: %d is not a positive block size", field, sizeField, tokens+chars)
		}
		if chars > 0 {
			tokens = chars / gieCharsPerToken
		}
	}
	stride := 1
	if !autoTune && sizeField != "" {
		if env.BlockSize <= 0 {
			return nil, fmt.Errorf("%s.%s: the engine block size is unknown, so a block size cannot be mapped onto it", field, sizeField)
		}
		if chars > 0 && chars%gieCharsPerToken != 0 || tokens <= 0 || tokens%env.BlockSize != 0 {
			what := fmt.Sprintf("%d tokens", tokens)
			if chars > 0 {
				what = fmt.Sprintf("%d characters (%g tokens at %d characters per token)", chars, float64(chars)/gieCharsPerToken, gieCharsPerToken)
			}
			return nil, fmt.Errorf("%s.%s: %s is not a whole multiple of the engine block size %d tokens; servelab's prefix index hashes whole engine blocks (set autoTune: true to use the engine block)",
				field, sizeField, what, env.BlockSize)
		}
		stride = tokens / env.BlockSize
	}

	maxBlocks := DefaultMaxPrefixBlocksToMatch
	switch {
	case p.MaxPrefixTokensToMatch != nil && *p.MaxPrefixTokensToMatch > 0:
		if env.BlockSize <= 0 {
			return nil, fmt.Errorf("%s.maxPrefixTokensToMatch: the engine block size is unknown, so tokens cannot be turned into blocks", field)
		}
		if maxBlocks = *p.MaxPrefixTokensToMatch / (stride * env.BlockSize); maxBlocks < 1 {
			return nil, fmt.Errorf("%s.maxPrefixTokensToMatch: %d tokens is less than one block of %d tokens",
				field, *p.MaxPrefixTokensToMatch, stride*env.BlockSize)
		}
	case p.MaxPrefixTokensToMatch != nil && *p.MaxPrefixTokensToMatch < 0:
		return nil, fmt.Errorf("%s.maxPrefixTokensToMatch: %d is negative", field, *p.MaxPrefixTokensToMatch)
	case p.MaxPrefixBlocksToMatch != nil:
		if maxBlocks = *p.MaxPrefixBlocksToMatch; maxBlocks < 1 {
			return nil, fmt.Errorf("%s.maxPrefixBlocksToMatch: %d is not a positive number of blocks", field, maxBlocks)
		}
	}
	capacity := DefaultLRUCapacityPerServer
	if p.LRUCapacityPerServer != nil {
		if capacity = *p.LRUCapacityPerServer; capacity < 1 || capacity > maxLRUCapacity {
			return nil, fmt.Errorf("%s.lruCapacityPerServer: %d is outside [1, %d]", field, capacity, maxLRUCapacity)
		}
	}
	return NewPrefixIndex(capacity, maxBlocks, stride)
}

// checkPreciseParams checks llm-d's precise-prefix-cache-scorer parameters. The scorer
// reads the views' exact caches, so the tokenizer and index settings have no counterpart
// and are accepted as they are; a kvEventsConfig is checked as the router reads it
// (epp_kvevents.go: it configures the router's ZeroMQ subscriptions); a token-processor
// block size, which llm-d requires to equal vLLM's, must equal the engine block size.
func checkPreciseParams(raw json.RawMessage, field string, env policies.Env) error {
	type tokenProcessor struct {
		BlockSize       *int   `json:"blockSize"`
		BlockSizeTokens *int   `json:"blockSizeTokens"`
		HashSeed        string `json:"hashSeed"`
	}
	var p struct {
		TokenProcessorConfig *tokenProcessor `json:"tokenProcessorConfig"`
		IndexerConfig        json.RawMessage `json:"indexerConfig"`
		KVEventsConfig       json.RawMessage `json:"kvEventsConfig"`
	}
	if err := decodeParams(raw, &p, field); err != nil {
		return err
	}
	if raw := bytes.TrimSpace(p.KVEventsConfig); len(raw) > 0 && !bytes.Equal(raw, []byte("null")) {
		if _, err := parseKVEventsConfig(p.KVEventsConfig, field+".kvEventsConfig"); err != nil {
			return err
		}
	}
	tp := p.TokenProcessorConfig
	if tp == nil {
		return nil
	}
	for _, f := range []struct {
		name string
		v    *int
	}{{"blockSizeTokens", tp.BlockSizeTokens}, {"blockSize", tp.BlockSize}} {
		if f.v == nil {
			continue
		}
		if *f.v <= 0 || env.BlockSize > 0 && *f.v != env.BlockSize {
			return fmt.Errorf("%s.tokenProcessorConfig.%s: %d must equal the engine block size %d", field, f.name, *f.v, env.BlockSize)
		}
	}
	return nil
}
