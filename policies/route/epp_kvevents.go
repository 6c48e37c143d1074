package route

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// KVEventsConfig is llm-d-kv-cache's kvevents.Config (pkg/kvcache/kvevents/pool.go), the
// kvEventsConfig parameter of llm-d-inference-scheduler's precise-prefix-cache-scorer
// (pkg/plugins/scorer/precise_prefix_cache.go): how the scheduler subscribes to the model
// servers' vLLM KV events over ZeroMQ. The scorer decodes its parameters over
// kvevents.DefaultConfig(), so omitted fields keep llm-d's defaults (DefaultKVEventsConfig).
// servelab's router follows it per endpoint (real/router.ZMQConfig): with discoverPods, a
// SUB socket at each endpoint's host and podDiscoveryConfig.socketPort (llm-d's pod
// reconciler dials tcp://PodIP:socketPort), filtered by topicFilter.
type KVEventsConfig struct {
	// ZMQEndpoint is llm-d's centralized mode, one socket that every engine's publisher
	// connects to; the router does not run it (it dials each endpoint), so it is refused.
	ZMQEndpoint string `json:"zmqEndpoint,omitempty"`
	// TopicFilter is the subscriptions' topic prefix (llm-d's default "kv@").
	TopicFilter string `json:"topicFilter"`
	// Concurrency is llm-d's number of event-processing workers; the router applies each
	// endpoint's events on that endpoint's own goroutine, so it is only checked.
	Concurrency int `json:"concurrency"`
	// EngineType is the events' dialect: llm-d's "vllm" or "sglang"; only "vllm" is read.
	EngineType string `json:"engineType,omitempty"`
	// DiscoverPods subscribes to each pod (endpoint) found; the router's mode.
	DiscoverPods bool `json:"discoverPods"`
	// PodDiscoveryConfig is where each pod is dialled.
	PodDiscoveryConfig *PodDiscoveryConfig `json:"podDiscoveryConfig,omitempty"`

	// Field names where the configuration was read: FILE: plugins[i].parameters.kvEventsConfig.
	Field string `json:"-"`
}

// PodDiscoveryConfig is llm-d-kv-cache's kvevents.PodDiscoveryConfig.
type PodDiscoveryConfig struct {
	// PodLabelSelector and PodNamespace select the pods llm-d's reconciler watches; the
	// router follows the endpoints it routes to (--endpoints, or --endpoint-selector's
	// pods), so they are accepted and have no further effect.
	PodLabelSelector string `json:"podLabelSelector"`
	PodNamespace     string `json:"podNamespace,omitempty"`
	// SocketPort is each pod's PUB socket port (llm-d's default 5557).
	SocketPort int `json:"socketPort"`
}

// DefaultKVEventsConfig is llm-d-kv-cache's kvevents.DefaultConfig().
func DefaultKVEventsConfig() KVEventsConfig {
	return KVEventsConfig{TopicFilter: "kv@", Concurrency: 4, DiscoverPods: true,
		PodDiscoveryConfig: &PodDiscoveryConfig{PodLabelSelector: "llm-d.ai/inference-serving=true", SocketPort: 5557}}
}

// parseKVEventsConfig reads a kvEventsConfig over llm-d's defaults, strictly; field names it
// in errors.
func parseKVEventsConfig(raw json.RawMessage, field string) (*KVEventsConfig, error) {
	c := DefaultKVEventsConfig()
	if err := decodeParams(raw, &c, field); err != nil {
		return nil, err
	}
	c.Field = field
	switch {
	case c.EngineType != "" && c.EngineType != "vllm":
		return nil, fmt.Errorf("%s.engineType: %q: the router reads vLLM's KV events (\"vllm\")", field, c.EngineType)
	case c.Concurrency < 1:
		return nil, fmt.Errorf("%s.concurrency: %d: want at least 1 worker", field, c.Concurrency)
	case c.ZMQEndpoint != "":
		return nil, fmt.Errorf("%s.zmqEndpoint: %q: the router does not bind one socket for every engine to connect to (llm-d's centralized mode); it dials each endpoint: use discoverPods with podDiscoveryConfig.socketPort", field, c.ZMQEndpoint)
	case !c.DiscoverPods:
		return nil, fmt.Errorf("%s.discoverPods: false without zmqEndpoint subscribes to no engine; want true (with podDiscoveryConfig.socketPort)", field)
	case c.PodDiscoveryConfig == nil:
		return nil, fmt.Errorf("%s.podDiscoveryConfig: null: discoverPods needs the pods' socketPort", field)
	case c.PodDiscoveryConfig.SocketPort < 1 || c.PodDiscoveryConfig.SocketPort > 65535:
		return nil, fmt.Errorf("%s.podDiscoveryConfig.socketPort: %d: want a port, 1 to 65535", field, c.PodDiscoveryConfig.SocketPort)
	}
	return &c, nil
}

// EndpointPickerKVEvents is the kvEventsConfig of the EndpointPickerConfig in data: that
// of its precise-prefix-cache-scorer, nil when none has one (the router then keeps its
// flags' KV-event source). Two such scorers with a kvEventsConfig are an error, which
// LoadEndpointPickerConfig reports too (pluginsKVEvents is the one check for both).
func EndpointPickerKVEvents(data []byte) (*KVEventsConfig, error) {
	var cfg struct {
		Plugins []eppPlugin `json:"plugins"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("EndpointPickerConfig: %w", err)
	}
	return pluginsKVEvents(cfg.Plugins)
}

// pluginsKVEvents is the kvEventsConfig of the precise-prefix-cache-scorers among plugins
// (an EndpointPickerConfig's plugins section), nil when none has one. The router
// subscribes to each endpoint once, with one configuration, so a second is an error,
// agreeing with the first or not: every caller that accepts an EndpointPickerConfig
// (the router, sim, experiments, the controller, deploy) refuses it through
// LoadEndpointPickerConfig or EndpointPickerKVEvents, both of which call this.
func pluginsKVEvents(plugins []eppPlugin) (*KVEventsConfig, error) {
	var found *KVEventsConfig
	for i, pl := range plugins {
		if pl.Type != PrecisePrefixCacheScorerType {
			continue
		}
		var p struct {
			KVEventsConfig json.RawMessage `json:"kvEventsConfig"`
		}
		// The scorer's other parameters are LoadEndpointPickerConfig's to check.
		if len(bytes.TrimSpace(pl.Parameters)) > 0 {
			if err := json.Unmarshal(pl.Parameters, &p); err != nil {
				return nil, fmt.Errorf("plugins[%d].parameters: %w", i, err)
			}
		}
		if raw := bytes.TrimSpace(p.KVEventsConfig); len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
			continue
		}
		c, err := parseKVEventsConfig(p.KVEventsConfig, fmt.Sprintf("plugins[%d].parameters.kvEventsConfig", i))
		if err != nil {
			return nil, err
		}
		if found != nil {
			return nil, fmt.Errorf("%s and %s: two kvEventsConfigs; the router subscribes once per endpoint, so give one", found.Field, c.Field)
		}
		found = c
	}
	return found, nil
}

// EndpointPickerKVEventsFile is EndpointPickerKVEvents of the file spec names, when spec
// is a YAML file holding an EndpointPickerConfig (as Parse tells them); nil otherwise.
// The configuration's Field starts with the file's name.
func EndpointPickerKVEventsFile(spec string) (*KVEventsConfig, error) {
	spec = strings.TrimSpace(spec)
	if !isYAMLPath(spec) {
		return nil, nil
	}
	data, err := os.ReadFile(spec)
	if err != nil {
		return nil, fmt.Errorf("route policy file: %w", err)
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil || head.APIVersion == "" && head.Kind == "" {
		return nil, nil // a policy spec in YAML, or Parse's error to report
	}
	c, err := EndpointPickerKVEvents(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec, err)
	}
	if c != nil {
		c.Field = spec + ": " + c.Field
	}
	return c, nil
}

// EndpointPickerKVEventsFiles is EndpointPickerKVEventsFile of each spec (an A/B test's
// arms, arm a's first): the kvEventsConfigs they have, in order. The router follows each
// endpoint once for both arms (they route over the same views and prefix index), so two
// configurations must agree on what it subscribes with: podDiscoveryConfig.socketPort and
// topicFilter. The other fields it checks (discoverPods, engineType, zmqEndpoint) have
// one accepted meaning each, and the rest have no effect, so they may differ. A
// disagreement is an error naming both files' fields. A file given twice counts once.
func EndpointPickerKVEventsFiles(specs ...string) ([]*KVEventsConfig, error) {
	var found []*KVEventsConfig
	for _, spec := range specs {
		c, err := EndpointPickerKVEventsFile(spec)
		if err != nil {
			return nil, err
		}
		if c == nil || slices.ContainsFunc(found, func(o *KVEventsConfig) bool { return o.Field == c.Field }) {
			continue // none, or the same file again: one configuration
		}
		for _, o := range found {
			switch {
			case o.PodDiscoveryConfig.SocketPort != c.PodDiscoveryConfig.SocketPort:
				return nil, fmt.Errorf("%s.podDiscoveryConfig.socketPort %d and %s.podDiscoveryConfig.socketPort %d disagree: the router follows each endpoint once for both arms; give them the same",
					o.Field, o.PodDiscoveryConfig.SocketPort, c.Field, c.PodDiscoveryConfig.SocketPort)
			case o.TopicFilter != c.TopicFilter:
				return nil, fmt.Errorf("%s.topicFilter %q and %s.topicFilter %q disagree: the router follows each endpoint once for both arms; give them the same",
					o.Field, o.TopicFilter, c.Field, c.TopicFilter)
			}
		}
		found = append(found, c)
	}
	return found, nil
}

// KVEventsFlagsAgree is the rule 'servelab router' and the LLMService controller share for
// the router's --kv-events-socket-port and --kv-events-topic-filter (socketPort and
// topicFilter, 0 and "" when not given) against kcs, the kvEventsConfigs of its
// EndpointPickerConfigs (EndpointPickerKVEventsFiles; they agree with one another): a flag
// given must name what the files say, else it is an error naming the flag and each file's
// field. The controller checks it before deploying, so a router pod that would refuse its
// args at start is never created. No files: nothing to disagree with.
func KVEventsFlagsAgree(socketPort int, topicFilter string, kcs []*KVEventsConfig) error {
	if len(kcs) == 0 {
		return nil
	}
	kc := kcs[0]
	switch {
	case socketPort != 0 && socketPort != kc.PodDiscoveryConfig.SocketPort:
		return fmt.Errorf("--kv-events-socket-port %d and %s disagree; give one", socketPort, KVEventsFields(kcs, ".podDiscoveryConfig.socketPort %d", kc.PodDiscoveryConfig.SocketPort))
	case topicFilter != "" && topicFilter != kc.TopicFilter:
		return fmt.Errorf("--kv-events-topic-filter %q and %s disagree; give one", topicFilter, KVEventsFields(kcs, ".topicFilter %q", kc.TopicFilter))
	}
	return nil
}

// KVEventsFields names each kvEventsConfig's field, followed by suffix formatted with args
// (the files agree on them), for an error: `A: plugins[0].parameters.kvEventsConfig.topicFilter
// "kv@" and B: plugins[1].parameters.kvEventsConfig.topicFilter "kv@"`.
func KVEventsFields(kcs []*KVEventsConfig, suffix string, args ...any) string {
	parts := make([]string, len(kcs))
	for i, kc := range kcs {
		parts[i] = kc.Field + fmt.Sprintf(suffix, args...)
	}
	return strings.Join(parts, " and ")
}
