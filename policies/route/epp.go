package route

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
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
	typ    string
	scorer scorer // set for scorers
	picker bool
}

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
	if cfg.APIVersion != EPPAPIVersion {
		return nil, fmt.Errorf("EndpointPickerConfig: apiVersion: got %q, want %q", cfg.APIVersion, EPPAPIVersion)
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
		return nil, fmt.Errorf("EndpointPickerConfig: schedulingProfiles: %d profiles given; only a single profile is supported (no prefill/decode split)",
			len(cfg.SchedulingProfiles))
	}

	var scorers []weightedScorer
	picker := ""
	seen := map[string]bool{}
	for j, ref := range profile.Plugins {
		field := fmt.Sprintf("schedulingProfiles[0].plugins[%d]", j)
		b, ok := built[ref.PluginRef]
		switch {
		case ref.PluginRef == "":
			return nil, fmt.Errorf("EndpointPickerConfig: %s.pluginRef: missing", field)
		case !ok:
			return nil, fmt.Errorf("EndpointPickerConfig: %s.pluginRef: no plugin named %q", field, ref.PluginRef)
		case seen[ref.PluginRef]:
			return nil, fmt.Errorf("EndpointPickerConfig: %s.pluginRef: %q referenced twice", field, ref.PluginRef)
		}
		seen[ref.PluginRef] = true
		if b.scorer == nil && ref.Weight != nil {
			return nil, fmt.Errorf("EndpointPickerConfig: %s.weight: %q is a %s, not a scorer; only scorers take a weight", field, ref.PluginRef, b.typ)
		}
		switch {
		case b.picker:
			if picker != "" {
				return nil, fmt.Errorf("EndpointPickerConfig: %s.pluginRef: a second picker %q; a profile has one picker", field, ref.PluginRef)
			}
			picker = b.typ
		case b.scorer != nil:
			weight := 1.0 // GIE's DefaultScorerWeight
			if ref.Weight != nil {
				weight = *ref.Weight
			}
			if !(weight >= 0) || math.IsInf(weight, 0) {
				return nil, fmt.Errorf("EndpointPickerConfig: %s.weight: %v is not a non-negative finite number", field, weight)
			}
			if weight > 0 {
				scorers = append(scorers, weightedScorer{typ: b.typ, name: ref.PluginRef, scorer: b.scorer, weight: weight})
			}
		default:
			return nil, fmt.Errorf("EndpointPickerConfig: %s.pluginRef: %q is a %s, which does not belong in a scheduling profile", field, ref.PluginRef, b.typ)
		}
	}
	if picker == "" {
		picker = MaxScorePickerType
	}
	return newWeighted(scorers, picker, env), nil
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
	case SingleProfileHandlerType:
		return inst, noParams(pl, params)
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
	return append(t, SingleProfileHandlerType)
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
// reads the views' exact caches, so the tokenizer, KV-event and index settings have no
// counterpart and are accepted as they are; a token-processor block size, which llm-d
// requires to equal vLLM's, must equal the engine block size.
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
