// Package experiments runs an experiment spec — a workload, a cluster and a matrix of
// routing, batching and eviction policies over seeds — in the simulator, cell by cell and in
// parallel, and writes each cell's summary, per-request records (Parquet) and time series,
// with results aggregated over seeds. An interrupted run resumes where it stopped.
package experiments

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/route"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
	"servelab/traces"
)

// Spec is an experiment as its YAML file describes it.
type Spec struct {
	Name     string   `json:"name"`
	Workload Workload `json:"workload"`
	Cluster  Cluster  `json:"cluster,omitzero"`
	// Clusters, given in place of cluster, are several clusters the matrix runs on, each
	// named: every policy combination and seed runs on each, so one experiment (and one
	// report) compares hardware as well as policies: a disaggregated cluster against the
	// same GPUs without disaggregation and against a homogeneous one of equal cost
	// (examples/pd-reference.yaml).
	Clusters []Cluster `json:"clusters,omitempty"`
	Policies Matrix    `json:"policies"`
	Seeds    []uint64  `json:"seeds,omitempty"`
	SLO      SLO       `json:"slo,omitempty"`
	// World is where the cells run: "sim" (the default), or "real": a local cluster of
	// engine processes behind the router, serving cluster.model (a model directory), with
	// the workload replayed over HTTP, one cell at a time.
	World string `json:"world,omitempty"`

	// dir is the spec file's directory, against which a relative trace path resolves.
	dir string
	// clusterKeys are the cluster keys the file sets, so that "instances: 0" is told from
	// a missing key (which takes the simulator's default): cluster's, or one map per entry
	// of clusters.
	clusterKeys []map[string]bool
	// clusterSet says the file has a cluster key (told from clusters alone).
	clusterSet bool
	// engine is the profiled engine's resolved configuration when cluster.latency is
	// profile:FILE and the profile records it: every cell runs it, except for the policies
	// the cell varies (see clusterSpec).
	engine *serving.EngineConfig
}

// Workload is a trace (optionally a time window of it, rate-scaled) or a synthetic one.
type Workload struct {
	Trace       string  `json:"trace,omitempty"`
	Format      string  `json:"format,omitempty"`
	Window      *Window `json:"window,omitempty"`
	MaxRequests int     `json:"max_requests,omitempty"`
	// RateScale multiplies the arrival rate; a list sweeps load, one cell per value.
	RateScale RateScales `json:"rate_scale,omitempty"`
	// TokenScale multiplies prompt and output lengths: a trace recorded on a large model
	// replayed on a small one (as the real world's CPU engines serve).
	TokenScale float64 `json:"token_scale,omitempty"`
	// OutputTokenScale, when set, multiplies output lengths apart from the prompts, and
	// token_scale then scales the prompts alone (as sim's --token-scale and
	// --output-token-scale): prompts shrunk to fit a small KV cache, outputs kept as
	// recorded (1).
	OutputTokenScale float64             `json:"output_token_scale,omitempty"`
	Synthetic        *traces.SynthConfig `json:"synthetic,omitempty"`
}

// Window keeps the trace's requests arriving in [start_s, end_s), shifted to start at 0.
type Window struct {
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s,omitempty"`
}

// RateScales is one rate scale or a list of them.
type RateScales []float64

// UnmarshalJSON accepts a number or a list of numbers.
func (r *RateScales) UnmarshalJSON(b []byte) error {
	var one float64
	if err := json.Unmarshal(b, &one); err == nil {
		*r = RateScales{one}
		return nil
	}
	var list []float64
	if err := json.Unmarshal(b, &list); err != nil {
		return errors.New("want a number or a list of numbers")
	}
	*r = list
	return nil
}

// Cluster is the simulated cluster every cell runs; the fields mean what sim.ClusterSpec's
// (and vLLM's flags of the same names) mean. Unset fields take sim.DefaultClusterSpec's.
type Cluster struct {
	// Name names an entry of clusters (required there, and unique; it leads the cells'
	// ids); a lone cluster has none.
	Name                 string  `json:"name,omitempty"`
	Instances            int     `json:"instances,omitempty"`
	Model                string  `json:"model,omitempty"`
	GPU                  string  `json:"gpu,omitempty"`
	TP                   int     `json:"tp,omitempty"`
	Latency              string  `json:"latency,omitempty"`
	BlockSize            int     `json:"block_size,omitempty"`
	NumGPUBlocksOverride int     `json:"num_gpu_blocks_override,omitempty"`
	GPUMemoryUtilization float64 `json:"gpu_memory_utilization,omitempty"`
	EnablePrefixCaching  *bool   `json:"enable_prefix_caching,omitempty"`
	MaxModelLen          int     `json:"max_model_len,omitempty"`
	// ScrapeInterval and KVEventDelay (seconds) are how stale the simulated router's gauges
	// and prefix caches are; 0 routes on exact instantaneous views. In the real world
	// scrape_interval_s is the router's --scrape-interval, and the KV-event delay is what
	// the transport takes.
	ScrapeInterval *float64 `json:"scrape_interval_s,omitempty"`
	KVEventDelay   *float64 `json:"kv_event_delay_s,omitempty"`
	// Pools, when set, replace instances, gpu and tp: the cluster as a list of pools, each
	// with a name, a role (both, prefill or decode: a prefill pool makes the cluster
	// disaggregated), instances, a GPU and a tp (sim.PoolSpec).
	Pools []sim.PoolSpec `json:"pools,omitempty"`
	// PrefillRouter, NonCachedTokens and KVLink configure disaggregation as
	// sim.ClusterSpec's fields of the same names: the prefill pool's router (empty: the
	// cell's router), llm-d's nonCachedTokens threshold (unset: 16) and the KV link preset
	// (nvlink, rdma or tcp; empty: rdma).
	PrefillRouter   string `json:"prefill_router,omitempty"`
	NonCachedTokens *int   `json:"non_cached_tokens,omitempty"`
	KVLink          string `json:"kv_link,omitempty"`
	// GPUPricePerHour overrides the default US dollars per GPU-hour by GPU name, for the
	// cost and goodput per dollar the results report.
	GPUPricePerHour map[string]float64 `json:"gpu_price_per_hour,omitempty"`
	// KVTiers are each instance's KV-cache tiers below the GPU, top down: medium (cpu or
	// disk), blocks, evict and a link preset (sim.KVTierSpec).
	KVTiers []sim.KVTierSpec `json:"kv_tiers,omitempty"`
	// Autoscale is a scaling policy spec (policies/scale) that starts and drains the
	// cluster's instances (instances is then ignored), and ScaleUpDelay the seconds a
	// started instance takes to become routable: sim.ClusterSpec's fields.
	Autoscale    string  `json:"autoscale,omitempty"`
	ScaleUpDelay float64 `json:"scale_up_delay_s,omitempty"`
	// FlowControl is the router's flow control (policies/flow spec, servelab router
	// --flow-control; empty: off) and Objectives the InferenceObjectives' priorities by
	// name (--objective), which the workload's objective column names.
	FlowControl string         `json:"flow_control,omitempty"`
	Objectives  map[string]int `json:"objectives,omitempty"`
	// ABRouter and ABFraction run an online A/B test of routing policies on the cluster
	// (sim.ClusterSpec's fields; servelab router --ab-router, --ab-fraction): ab_fraction
	// of the requests (0 to 1, required with ab_router) are routed by ab_router's policy
	// (arm b), the rest by the cell's router (arm a), split by a hash of the cell's seed and
	// the trace row index; results and reports show the two arms side by side.
	ABRouter   string   `json:"ab_router,omitempty"`
	ABFraction *float64 `json:"ab_fraction,omitempty"`
}

// Matrix is the policies crossed: every router with every batch and evict spec.
type Matrix struct {
	Routers []string `json:"routers"`
	Batch   []string `json:"batch,omitempty"`
	Evict   []string `json:"evict,omitempty"`
}

// SLO holds goodput targets in milliseconds (vLLM's --goodput).
type SLO struct {
	TTFTMs float64 `json:"ttft_ms,omitempty"`
	TPOTMs float64 `json:"tpot_ms,omitempty"`
	E2ELMs float64 `json:"e2el_ms,omitempty"`
}

// Metrics is the SLO as goodput counts it.
func (s SLO) Metrics() metrics.SLO {
	return metrics.SLO{TTFTMs: s.TTFTMs, TPOTMs: s.TPOTMs, E2ELMs: s.E2ELMs}
}

// Load reads and checks a spec file.
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, path)
}

// Parse reads a spec; path names it in errors and anchors a relative trace path. Unknown
// keys and bad values are errors naming the key, e.g. "cluster.instnces: unknown key".
func Parse(data []byte, path string) (*Spec, error) {
	s, err := decode(data, path)
	if err != nil {
		return nil, err
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// decode reads a spec's keys and values without checking what they name.
func decode(data []byte, path string) (*Spec, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var raw any
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%s: empty spec", path)
	}
	if err := checkKeys(raw, reflect.TypeFor[Spec](), ""); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var s Spec
	dec := json.NewDecoder(bytes.NewReader(js))
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, describeJSONError(err))
	}
	s.dir = filepath.Dir(path)
	keys := func(v any) map[string]bool {
		set := map[string]bool{}
		if k, ok := v.(map[string]any); ok {
			for key := range k {
				set[key] = true
			}
		}
		return set
	}
	if m, ok := raw.(map[string]any); ok {
		if list, ok := m["clusters"].([]any); ok {
			for _, k := range list {
				s.clusterKeys = append(s.clusterKeys, keys(k))
			}
		} else {
			s.clusterKeys = []map[string]bool{keys(m["cluster"])}
		}
		_, s.clusterSet = m["cluster"]
	}
	return &s, nil
}

// ReadSpec reads an experiment directory's spec.yaml, the spec as run (Normalized). It is
// decoded with the same strict keys as Parse but not validated again: a finished run's
// report or listing needs its cells, not its trace or model files, which may have moved.
func ReadSpec(dir string) (*Spec, error) {
	path := filepath.Join(dir, "spec.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := decode(data, path)
	if err != nil {
		return nil, err
	}
	s.defaults()
	return s, nil
}

// defaults fills what a spec may leave out.
func (s *Spec) defaults() {
	if s.World == "" {
		s.World = "sim"
	}
	if len(s.Workload.RateScale) == 0 {
		s.Workload.RateScale = RateScales{1}
	}
	if len(s.Seeds) == 0 {
		s.Seeds = []uint64{0}
	}
	if len(s.Policies.Batch) == 0 {
		s.Policies.Batch = []string{"vllm"}
		if s.engine != nil {
			s.Policies.Batch = []string{s.engine.Batch}
		}
	}
	if len(s.Policies.Evict) == 0 {
		s.Policies.Evict = []string{"lru"}
		if s.engine != nil {
			s.Policies.Evict = []string{s.engine.Evict}
		}
	}
}

// loadProfiledEngine reads the engine configuration a cluster.latency of profile:FILE
// records. The cells then run that engine's KV cache, context and prefix caching, and
// build their policies as that engine builds its own (with no GPU class: the CPU engine
// resolves its batch defaults so, cmd/servelab/engine.go), never the simulator's H100
// defaults; a cluster key that would override one of them is refused, as `servelab sim
// --latency profile:FILE` refuses the matching flags.
func (s *Spec) loadProfiledEngine() error {
	if s.World != "" && s.World != "sim" {
		return nil
	}
	for i, k := range s.Clusters {
		if file, ok := strings.CutPrefix(k.Latency, "profile:"); ok {
			return fmt.Errorf("clusters[%d].latency: profile:%s runs one profiled engine's configuration; give it as cluster (one cluster), or use linear:%s for its step times here",
				i, file, file)
		}
	}
	k := s.Cluster
	file, ok := strings.CutPrefix(k.Latency, "profile:")
	if !ok {
		return nil
	}
	p, err := latency.LoadProfile(s.resolve(file))
	if err != nil {
		return fmt.Errorf("cluster.latency: %w", err)
	}
	if p.Engine == nil {
		return nil // an old profile: its step times, with the spec's settings (Build's defaults)
	}
	// A key that says what the engine runs is fine (spec.yaml, the spec as run, says it).
	e := p.Engine
	for _, f := range []struct {
		key      string
		override bool
	}{
		{"gpu", k.GPU != ""}, {"block_size", s.hasKey(0, "block_size") && k.BlockSize != e.BlockSize},
		{"num_gpu_blocks_override", s.hasKey(0, "num_gpu_blocks_override") && k.NumGPUBlocksOverride != e.NumGPUBlocks},
		{"max_model_len", s.hasKey(0, "max_model_len") && k.MaxModelLen != e.MaxModelLen},
		{"enable_prefix_caching", k.EnablePrefixCaching != nil && *k.EnablePrefixCaching != e.EnablePrefixCaching},
		{"gpu_memory_utilization", s.hasKey(0, "gpu_memory_utilization")},
	} {
		if f.override {
			return fmt.Errorf("cluster.%s: latency profile:%s runs the profiled engine's configuration (%d KV blocks of %d tokens, max model len %d, prefix caching %t); leave it out, or use linear:%s for its step times with other settings",
				f.key, file, p.Engine.NumGPUBlocks, p.Engine.BlockSize, p.Engine.MaxModelLen, p.Engine.EnablePrefixCaching, file)
		}
	}
	s.engine = p.Engine
	return nil
}

// checkKeys reports the first key in v that t has no field for, with its path.
func checkKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			if v == nil {
				return nil
			}
			return fmt.Errorf("%s: want a mapping", orRoot(path))
		}
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.IsExported() && name != "-" && name != "" {
				fields[name] = f.Type
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("%s: unknown key", join(path, k))
			}
			if err := checkKeys(m[k], ft, join(path, k)); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if list, ok := v.([]any); ok {
			for i, item := range list {
				if err := checkKeys(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orRoot(path string) string {
	if path == "" {
		return "the spec"
	}
	return path
}

// describeJSONError names the field of a type mismatch.
func describeJSONError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Errorf("%s: want %s, got %s", te.Field, te.Type, te.Value)
	}
	return err
}

// validate checks values and fills defaults.
func (s *Spec) validate() error {
	if s.Name == "" {
		return errors.New("name: required")
	}
	if !validName(s.Name) {
		return fmt.Errorf("name: %q: use letters, digits, '-', '_' and '.' (it names the output directory)", s.Name)
	}
	if err := s.loadProfiledEngine(); err != nil {
		return err
	}
	s.defaults()
	switch {
	case len(s.Clusters) > 0 && s.clusterSet:
		return errors.New("cluster: give cluster or clusters, not both")
	case len(s.Clusters) > 0 && s.World == "real":
		return errors.New("clusters: the real world runs one local cluster; give it as cluster")
	}
	switch s.World {
	case "sim":
	case "real":
		k := s.Cluster
		for _, f := range []struct {
			key string
			set bool
		}{{"gpu", k.GPU != ""}, {"tp", k.TP != 0}, {"latency", k.Latency != ""}, {"gpu_memory_utilization", k.GPUMemoryUtilization != 0},
			{"kv_event_delay_s", k.KVEventDelay != nil}, {"gpu_price_per_hour", len(k.GPUPricePerHour) > 0},
			{"kv_link", k.KVLink != ""}} {
			if f.set {
				what := "only the simulator models it"
				if f.key == "kv_link" {
					what = "the KV moves over loopback HTTP, measured (servelab:kv_transfer_pull_seconds)"
				}
				return fmt.Errorf("cluster.%s: the real world runs the engines on this machine; %s", f.key, what)
			}
		}
		if err := s.checkRealCluster(); err != nil {
			return err
		}
		if k.ScrapeInterval != nil && !(*k.ScrapeInterval > 0) {
			return fmt.Errorf("cluster.scrape_interval_s: the real router scrapes at a positive interval, got %v", *k.ScrapeInterval)
		}
		if !fileExists(filepath.Join(s.resolve(k.Model), "config.json")) {
			return fmt.Errorf("cluster.model: %q: the real world needs a model directory with config.json (servelab model synth makes one)", k.Model)
		}
	default:
		return fmt.Errorf("world: %q: want sim or real", s.World)
	}
	if err := s.checkClusters(); err != nil {
		return err
	}
	w := &s.Workload
	switch {
	case w.Trace == "" && w.Synthetic == nil:
		return errors.New("workload: give trace or synthetic")
	case w.Trace != "" && w.Synthetic != nil:
		return errors.New("workload: give trace or synthetic, not both")
	case w.MaxRequests < 0:
		return fmt.Errorf("workload.max_requests: must not be negative, got %d", w.MaxRequests)
	}
	if w.Trace != "" {
		if _, err := os.Stat(s.TracePath()); err != nil {
			return fmt.Errorf("workload.trace: %w", err)
		}
		if w.Format != "" && !slices.Contains(traces.Formats(), traces.Format(w.Format)) {
			return fmt.Errorf("workload.format: %q: want one of %v", w.Format, traces.Formats())
		}
	}
	if w.Synthetic != nil {
		if _, err := traces.NewSynth(*w.Synthetic); err != nil {
			return fmt.Errorf("workload.synthetic: %w", err)
		}
	}
	if win := w.Window; win != nil && (!(win.StartS >= 0) || win.EndS != 0 && !(win.EndS > win.StartS)) {
		return fmt.Errorf("workload.window: want 0 <= start_s < end_s, got %v..%v", win.StartS, win.EndS)
	}
	if w.TokenScale < 0 || math.IsInf(w.TokenScale, 0) {
		return fmt.Errorf("workload.token_scale: must be positive, got %v", w.TokenScale)
	}
	if w.OutputTokenScale < 0 || math.IsInf(w.OutputTokenScale, 0) {
		return fmt.Errorf("workload.output_token_scale: must be positive, got %v", w.OutputTokenScale)
	}
	for i, r := range w.RateScale {
		if !(r > 0) || math.IsInf(r, 0) {
			return fmt.Errorf("workload.rate_scale[%d]: must be positive, got %v", i, r)
		}
	}
	if len(s.Policies.Routers) == 0 {
		return errors.New("policies.routers: give at least one routing policy")
	}
	if s.SLO.TTFTMs < 0 || s.SLO.TPOTMs < 0 || s.SLO.E2ELMs < 0 {
		return errors.New("slo: targets must not be negative")
	}
	for i, k := range s.clusters() {
		cluster := s.clusterSpec(k.Name, s.Policies.Routers[0], s.Policies.Batch[0], s.Policies.Evict[0], 0)
		env := policies.Env{BlockSize: cluster.BlockSize, GPUClass: latency.GPUClass(cluster.GPU)}
		for i, r := range s.Policies.Routers {
			// Parse refuses, in both worlds, what the router refuses of the file's
			// kvEventsConfig (two in one file: the loader runs the router's own check),
			// rather than when a cell runs.
			if _, err := route.Parse(s.resolve(r), env); err != nil {
				return fmt.Errorf("policies.routers[%d]: %w", i, err)
			}
		}
		if err := s.checkABPolicies(i, env); err != nil {
			return err
		}
		if s.World == "real" {
			for _, r := range s.Policies.Routers {
				if _, err := s.PDProfile(Cell{Cluster: k.Name, Router: r, Batch: s.Policies.Batch[0], Evict: s.Policies.Evict[0]}, cluster.BlockSize); err != nil {
					return err
				}
			}
		}
		for i, b := range s.Policies.Batch {
			if _, _, err := batch.Registry.Parse(b, env); err != nil {
				return fmt.Errorf("policies.batch[%d]: %w", i, err)
			}
		}
		for i, e := range s.Policies.Evict {
			if _, _, err := evict.Registry.Parse(e, env); err != nil {
				return fmt.Errorf("policies.evict[%d]: %w", i, err)
			}
		}
		if _, err := cluster.Build(s.SLO.Metrics()); err != nil && s.World == "sim" {
			return fmt.Errorf("%s: %w", s.clusterPath(i), err)
		}
	}
	if ids := map[string]bool{}; true {
		for _, c := range s.Cells() {
			if ids[c.ID] {
				return fmt.Errorf("policies: two cells would share the id %q; make the specs differ in their names", c.ID)
			}
			ids[c.ID] = true
		}
	}
	return nil
}

// checkRealCluster checks what the real world reads of pools and kv_tiers: each pool's
// name, role and instances (an engine process each, with the pool's role); each tier's
// medium, blocks and evict policy (the engines' --kv-tier). GPUs, tensor parallelism and
// tier presets describe hardware the real world does not model but measures.
func (s *Spec) checkRealCluster() error {
	k := s.Cluster
	seen := map[string]bool{}
	var prefill, decode int
	for i, p := range k.Pools {
		key := fmt.Sprintf("cluster.pools[%d]", i)
		switch {
		case p.Name == "":
			return fmt.Errorf("%s.name: must be set", key)
		case seen[p.Name]:
			return fmt.Errorf("%s.name: pool %q appears twice", key, p.Name)
		case p.Instances <= 0:
			return fmt.Errorf("%s.instances: must be positive, got %d", key, p.Instances)
		case p.GPU != "":
			return fmt.Errorf("%s.gpu: the real world runs each pool's engines on this machine's CPUs; leave gpu out", key)
		case p.TP != 0:
			return fmt.Errorf("%s.tp: the real engine runs without tensor parallelism; leave tp out", key)
		}
		seen[p.Name] = true
		switch p.Role {
		case sim.RolePrefill:
			prefill++
		case sim.RoleDecode:
			decode++
		case "", sim.RoleBoth:
		default:
			return fmt.Errorf("%s.role: unknown role %q (want %s, %s or %s)", key, p.Role, sim.RoleBoth, sim.RolePrefill, sim.RoleDecode)
		}
	}
	switch {
	case prefill > 0 && prefill == len(k.Pools):
		return errors.New("cluster.pools: every pool has role prefill; disaggregation needs a decode pool to decode")
	case decode > 0 && prefill == 0:
		return errors.New("cluster.pools: a pool has role decode but none has role prefill; give the prefill pool, or make the decode pool's role both")
	case prefill == 0 && (k.PrefillRouter != "" || k.NonCachedTokens != nil):
		return errors.New("cluster.prefill_router, non_cached_tokens: set, but no pool has role prefill; they configure prefill/decode disaggregation")
	}
	media := map[string]bool{}
	for i, t := range k.KVTiers {
		key := fmt.Sprintf("cluster.kv_tiers[%d]", i)
		switch {
		case t.Medium != "cpu" && t.Medium != "disk":
			return fmt.Errorf("%s.medium: unknown medium %q (want cpu or disk)", key, t.Medium)
		case media[t.Medium]:
			return fmt.Errorf("%s.medium: %q appears twice", key, t.Medium)
		case t.Blocks <= 0:
			return fmt.Errorf("%s.blocks: must be positive, got %d", key, t.Blocks)
		case t.Preset != "" || t.BandwidthGBps != 0 || t.LatencyUs != 0:
			return fmt.Errorf("%s: preset, bandwidth_gbps and latency_us price the simulator's loads; the real engine measures its own (servelab:kv_tier_load_seconds), leave them out", key)
		}
		media[t.Medium] = true
		if t.Evict != "" {
			if _, _, err := evict.Registry.Parse(t.Evict, policies.Env{BlockSize: 16}); err != nil {
				return fmt.Errorf("%s.evict: %w", key, err)
			}
		}
	}
	if len(k.KVTiers) > 0 && k.EnablePrefixCaching != nil && !*k.EnablePrefixCaching {
		return errors.New("cluster.kv_tiers: set with enable_prefix_caching false; tiers hold cached prefix blocks")
	}
	return nil
}

// RealRoles are the llm-d roles of a real-world cell's engines, one per engine in the
// order the pools list them (prefill, decode or both), or nil for a cluster without a
// prefill pool, which runs without roles as today.
func (s *Spec) RealRoles() []string {
	var roles []string
	prefill := false
	for _, p := range s.Cluster.Pools {
		role := p.Role
		if role == "" {
			role = sim.RoleBoth
		}
		prefill = prefill || role == sim.RolePrefill
		for range p.Instances {
			roles = append(roles, role)
		}
	}
	if !prefill {
		return nil
	}
	return roles
}

// PrefillInstances are the instances of the spec's prefill pools, numbered as both worlds
// number them (the pools in order); nil without pools.
func (s *Spec) PrefillInstances() map[int]bool {
	var out map[int]bool
	i := 0
	for _, p := range s.Cluster.Pools {
		for range p.Instances {
			if p.Role == sim.RolePrefill {
				if out == nil {
					out = map[int]bool{}
				}
				out[i] = true
			}
			i++
		}
	}
	return out
}

// PDProfile is the P/D decision a real-world cell's router runs when a pool has role
// prefill: sim.ClusterSpec.PDProfile of the cell's cluster, the objects and defaults the
// simulator's disaggregation uses (the cell's router as the decode profile, prefill_router
// or the same spec as the prefill profile, llm-d's decider with non_cached_tokens), or the
// router's own when it is a P/D EndpointPickerConfig. Nil without a prefill pool.
func (s *Spec) PDProfile(c Cell, blockSize int) (*route.PDProfileHandler, error) {
	if s.RealRoles() == nil {
		return nil, nil
	}
	cs := s.clusterSpec(c.Cluster, c.Router, c.Batch, c.Evict, c.Seed)
	pd, err := cs.PDProfile(policies.Env{Seed: c.Seed, BlockSize: blockSize})
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return pd, nil
}

// maxViewDelay bounds scrape_interval_s and kv_event_delay_s: an hour, far beyond any
// router's (llm-d's scrape is 50 ms).
const maxViewDelay = 3600

// clusters are the clusters the cells run on: clusters' entries, or cluster alone.
func (s *Spec) clusters() []Cluster {
	if len(s.Clusters) > 0 {
		return s.Clusters
	}
	return []Cluster{s.Cluster}
}

// clusterPath names the i-th of clusters() in errors: "cluster" or "clusters[i]".
func (s *Spec) clusterPath(i int) string {
	if len(s.Clusters) > 0 {
		return fmt.Sprintf("clusters[%d]", i)
	}
	return "cluster"
}

// hasKey says whether the file sets key in the i-th of clusters().
func (s *Spec) hasKey(i int, key string) bool {
	return i < len(s.clusterKeys) && s.clusterKeys[i][key]
}

// ClusterNamed is the cluster a cell named by PolicyResult.Cluster ran on: the entry of
// clusters of that name, or cluster for "" (a spec of one cluster).
func (s *Spec) ClusterNamed(name string) Cluster { return s.cluster(name) }

// cluster is the cluster named name (clusters' entry; "" is cluster).
func (s *Spec) cluster(name string) Cluster {
	for _, k := range s.Clusters {
		if k.Name == name {
			return k
		}
	}
	return s.Cluster
}

// checkClusters checks cluster, or each of clusters and that their names are usable and
// distinct.
func (s *Spec) checkClusters() error {
	if len(s.Clusters) == 0 {
		if s.Cluster.Name != "" {
			return errors.New("cluster.name: only the entries of clusters are named; a lone cluster is not")
		}
		return s.checkCluster(0)
	}
	seen := map[string]int{}
	for i, k := range s.Clusters {
		switch j, dup := seen[k.Name]; {
		case k.Name == "":
			return fmt.Errorf("clusters[%d].name: required (it names the cluster's cells and rows)", i)
		case !validName(k.Name) || strings.Contains(k.Name, "__"):
			return fmt.Errorf("clusters[%d].name: %q: use letters, digits, '-', '_' and '.', and no \"__\" (it leads the cells' directory names)", i, k.Name)
		case dup:
			return fmt.Errorf("clusters[%d].name: %q is clusters[%d]'s name too", i, k.Name, j)
		}
		seen[k.Name] = i
		if err := s.checkCluster(i); err != nil {
			return err
		}
	}
	return nil
}

// checkCluster checks the i-th of clusters()' numbers; a key set to 0 is an error like
// any other bad value, not a request for the default (which leaving the key out gives).
func (s *Spec) checkCluster(i int) error {
	k := s.clusters()[i]
	path := s.clusterPath(i)
	// The router's views: seconds, bounded so the real world's time.Duration cannot
	// overflow and a NaN never reaches spec.yaml (JSON has no NaN).
	for _, f := range []struct {
		key string
		v   *float64
	}{{"scrape_interval_s", k.ScrapeInterval}, {"kv_event_delay_s", k.KVEventDelay}} {
		if f.v != nil && !(*f.v >= 0 && *f.v <= maxViewDelay) {
			return fmt.Errorf("%s.%s: must be 0 or a positive number of seconds, at most %g, got %v", path, f.key, float64(maxViewDelay), *f.v)
		}
	}
	for _, f := range []struct {
		key string
		v   int
	}{{"instances", k.Instances}, {"tp", k.TP}, {"block_size", k.BlockSize}} {
		if f.v < 0 || f.v == 0 && s.hasKey(i, f.key) {
			return fmt.Errorf("%s.%s: must be positive, got %d", path, f.key, f.v)
		}
	}
	for _, f := range []struct {
		key string
		v   int
	}{{"num_gpu_blocks_override", k.NumGPUBlocksOverride}, {"max_model_len", k.MaxModelLen}} {
		if f.v < 0 {
			return fmt.Errorf("%s.%s: must not be negative, got %d", path, f.key, f.v)
		}
	}
	if u := k.GPUMemoryUtilization; u < 0 || u > 1 || math.IsNaN(u) || u == 0 && s.hasKey(i, "gpu_memory_utilization") {
		return fmt.Errorf("%s.gpu_memory_utilization: want a fraction in (0, 1], got %v", path, u)
	}
	if err := checkAB(k, path); err != nil {
		return err
	}
	if len(k.Pools) > 0 {
		for _, key := range []string{"instances", "gpu", "tp"} {
			if s.hasKey(i, key) {
				return fmt.Errorf("%s.%s: set together with %s.pools; a cluster of pools gives each pool's instances, gpu and tp", path, key, path)
			}
		}
	}
	return nil
}

// checkAB checks a cluster's A/B test of routing policies (its policies are parsed with
// the routers').
func checkAB(k Cluster, path string) error {
	switch f := k.ABFraction; {
	case k.ABRouter == "" && f != nil:
		return fmt.Errorf("%s.ab_fraction: %v without %s.ab_router, the routing policy of arm b", path, *f, path)
	case k.ABRouter == "":
		return nil
	case f == nil:
		return fmt.Errorf("%s.ab_fraction: required with %s.ab_router: the share of requests (0 to 1) its policy routes", path, path)
	case !(*f >= 0 && *f <= 1):
		return fmt.Errorf("%s.ab_fraction: want the share of requests in arm b, from 0 to 1, got %v", path, *f)
	}
	for _, p := range k.Pools {
		if p.Role == sim.RolePrefill {
			return fmt.Errorf("%s.ab_router: an A/B test of routing policies cannot run in a disaggregated cluster (pool %s has role prefill)", path, p.Name)
		}
	}
	return nil
}

// checkABPolicies parses a cluster's ab_router and refuses what cannot be an arm: a P/D
// EndpointPickerConfig, as ab_router or as one of the routers (arm a); and what the
// router refuses of the arms' kvEventsConfigs: two in ab_router's file (route.Parse, as
// every file), or a router's and ab_router's that disagree (route.EndpointPickerKVEventsFiles,
// as servelab router and sim check them), since the arms share one KV-event subscription
// per endpoint.
func (s *Spec) checkABPolicies(i int, env policies.Env) error {
	k := s.clusters()[i]
	if k.ABRouter == "" {
		return nil
	}
	path := s.clusterPath(i)
	b, err := route.Parse(s.resolve(k.ABRouter), env)
	if err != nil {
		return fmt.Errorf("%s.ab_router: %w", path, err)
	}
	if _, ok := b.(*route.PDProfileHandler); ok {
		return fmt.Errorf("%s.ab_router: %s is a P/D EndpointPickerConfig, which cannot be an A/B arm", path, k.ABRouter)
	}
	for j, r := range s.Policies.Routers {
		if a, err := route.Parse(s.resolve(r), env); err == nil {
			if _, ok := a.(*route.PDProfileHandler); ok {
				return fmt.Errorf("policies.routers[%d]: %s is a P/D EndpointPickerConfig, which cannot be arm a of %s.ab_router's A/B test", j, r, path)
			}
		}
		// Each file alone has passed (validate checks the routers'), so an error here is
		// the two files' disagreement, named by both keys and both files' fields.
		if _, err := route.EndpointPickerKVEventsFiles(s.resolve(r), s.resolve(k.ABRouter)); err != nil {
			return fmt.Errorf("policies.routers[%d] and %s.ab_router: %w", j, path, err)
		}
	}
	return nil
}

func validName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return s != "." && s != ".."
}

// PolicyPath is a policy spec of the spec's cells as the cells run it: an
// EndpointPickerConfig file named relative to the spec file resolved against it, other
// specs unchanged.
func (s *Spec) PolicyPath(spec string) string { return s.resolve(spec) }

// TracePath is the workload's trace file, resolved against the spec's directory.
func (s *Spec) TracePath() string { return s.resolve(s.Workload.Trace) }

// ModelPath is cluster.model: a model name, or a file or directory resolved against the
// spec's directory.
func (s *Spec) ModelPath() string { return s.resolve(s.Cluster.Model) }

// resolve makes a relative path (a trace, an EndpointPickerConfig or latency profile
// file named in the spec) relative to the spec file. Policy specs that are not files are
// returned unchanged.
func (s *Spec) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || s.dir == "" {
		return p
	}
	if q := filepath.Join(s.dir, p); exists(q) {
		return q
	}
	return p
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// clusterSpec is the simulator's cluster for one cell, on the cluster named cluster ("":
// the spec's lone cluster).
func (s *Spec) clusterSpec(cluster, router, batchSpec, evictSpec string, seed uint64) sim.ClusterSpec {
	c := sim.DefaultClusterSpec()
	k := s.cluster(cluster)
	if k.Instances != 0 {
		c.Instances = k.Instances
	}
	if len(k.Pools) > 0 {
		c.UsePools(k.Pools)
	}
	c.GPUPricePerHour = k.GPUPricePerHour
	c.KVTiers = k.KVTiers
	c.PrefillRouter, c.NonCachedTokens, c.KVLink = s.resolve(k.PrefillRouter), k.NonCachedTokens, k.KVLink
	c.Autoscale, c.ScaleUpDelay = k.Autoscale, k.ScaleUpDelay
	c.FlowControl, c.Objectives = k.FlowControl, k.Objectives
	c.ABRouter = s.resolve(k.ABRouter)
	if k.ABFraction != nil {
		c.ABFraction = *k.ABFraction
	}
	if k.Model != "" {
		c.Model = s.resolve(k.Model)
	}
	if k.GPU != "" {
		c.GPU = k.GPU
	}
	if k.TP != 0 {
		c.TP = k.TP
	}
	if k.Latency != "" {
		c.Latency = k.Latency
		for _, prefix := range []string{"profile:", "linear:"} {
			if file, ok := strings.CutPrefix(k.Latency, prefix); ok {
				c.Latency = prefix + s.resolve(file)
			}
		}
	}
	if k.BlockSize != 0 {
		c.BlockSize = k.BlockSize
	}
	c.NumGPUBlocksOverride = k.NumGPUBlocksOverride
	if k.GPUMemoryUtilization != 0 {
		c.GPUMemoryUtilization = k.GPUMemoryUtilization
	}
	if k.EnablePrefixCaching != nil {
		c.EnablePrefixCaching = *k.EnablePrefixCaching
	}
	c.MaxModelLen = k.MaxModelLen
	if e := s.engine; e != nil {
		c.GPU = ""
		c.BlockSize, c.NumGPUBlocksOverride, c.MaxModelLen = e.BlockSize, e.NumGPUBlocks, e.MaxModelLen
		c.EnablePrefixCaching, c.GPUMemoryUtilization = e.EnablePrefixCaching, 0
	}
	if k.ScrapeInterval != nil {
		c.ScrapeInterval = *k.ScrapeInterval
	}
	if k.KVEventDelay != nil {
		c.KVEventDelay = *k.KVEventDelay
	}
	c.Router, c.Batch, c.Evict, c.Seed = s.resolve(router), batchSpec, evictSpec, seed
	return c
}

// Cell is one run of the matrix.
type Cell struct {
	ID string `json:"id"`
	// Cluster names the entry of the spec's clusters the cell runs on; empty for a spec
	// of one cluster.
	Cluster   string  `json:"cluster,omitempty"`
	Router    string  `json:"router"`
	Batch     string  `json:"batch"`
	Evict     string  `json:"evict"`
	Seed      uint64  `json:"seed"`
	RateScale float64 `json:"rate_scale"`
}

// Cells lists the matrix in a stable order: rate scale, cluster, router, batch, evict,
// seed. With clusters, a cell's id starts with its cluster's name.
func (s *Spec) Cells() []Cell {
	var cells []Cell
	for _, rate := range s.Workload.RateScale {
		for _, k := range s.clusters() {
			for _, r := range s.Policies.Routers {
				for _, b := range s.Policies.Batch {
					for _, e := range s.Policies.Evict {
						for _, seed := range s.Seeds {
							id := fmt.Sprintf("%s__%s__%s__s%d", idPart(r), idPart(b), idPart(e), seed)
							if k.Name != "" {
								id = k.Name + "__" + id
							}
							if len(s.Workload.RateScale) > 1 {
								id += "__x" + strconv.FormatFloat(rate, 'g', -1, 64)
							}
							cells = append(cells, Cell{ID: id, Cluster: k.Name, Router: r, Batch: b, Evict: e, Seed: seed, RateScale: rate})
						}
					}
				}
			}
		}
	}
	return cells
}

// idPart makes a policy spec directory-safe: "weighted:prefix=3,queue=1" becomes
// "weighted-prefix=3-queue=1", a file path its base name without extension.
func idPart(spec string) string {
	if strings.HasSuffix(spec, ".yaml") || strings.HasSuffix(spec, ".yml") {
		spec = strings.TrimSuffix(filepath.Base(spec), filepath.Ext(spec))
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.', r == '=':
			return r
		}
		return '-'
	}, spec)
}

// Normalized is the spec as run, as YAML: defaults filled in, and the cluster as the
// simulator resolved it (sim.ClusterSpec.Build's instances, model, GPU, latency model, block
// size, max_model_len...), so spec.yaml says what ran. The policy specs stay as written:
// they name the cells.
func (s *Spec) Normalized() ([]byte, error) {
	c := *s
	if s.World == "sim" && len(s.Policies.Routers) > 0 {
		var resolved []Cluster
		for _, k := range s.clusters() {
			r, err := s.resolvedCluster(k.Name)
			if err != nil {
				return nil, err
			}
			resolved = append(resolved, r)
		}
		if len(s.Clusters) > 0 {
			c.Clusters = resolved
		} else {
			c.Cluster = resolved[0]
		}
	} else if c.Cluster.Instances == 0 && len(c.Cluster.Pools) == 0 {
		// The real world starts this many engines (its other values come from the model).
		c.Cluster.Instances = sim.DefaultClusterSpec().Instances
	}
	if c.Workload.Trace != "" {
		// Absolute, so the copy written into the experiment directory still finds it.
		abs, err := filepath.Abs(s.TracePath())
		if err != nil {
			return nil, err
		}
		c.Workload.Trace = abs
	}
	if m := s.ModelPath(); exists(m) {
		abs, err := filepath.Abs(m)
		if err != nil {
			return nil, err
		}
		c.Cluster.Model = abs
	}
	js, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(js)
}

// Instances is how many instances the spec's cells run (the simulator's default when the
// spec leaves cluster.instances out); with clusters, the most of any.
func (s *Spec) Instances() int {
	n := 0
	for _, k := range s.clusters() {
		n = max(n, s.ClusterInstances(k.Name))
	}
	return n
}

// ClusterInstances is how many instances the cluster named cluster runs ("": the spec's
// lone cluster).
func (s *Spec) ClusterInstances(cluster string) int {
	c := s.clusterSpec(cluster, "", "", "", 0)
	n := c.Instances
	for _, p := range c.Pools {
		n += p.Instances
	}
	return n
}

// resolvedCluster is the cluster named name as the simulator builds it: the values of
// sim.ClusterSpec (its defaults where the spec leaves a key out) and the max_model_len
// Build derives from the latency model. The cells on one cluster differ only in policies
// and seeds, which do not change these.
func (s *Spec) resolvedCluster(name string) (Cluster, error) {
	cs := s.clusterSpec(name, s.Policies.Routers[0], s.Policies.Batch[0], s.Policies.Evict[0], 0)
	cfg, err := cs.Build(s.SLO.Metrics())
	if err != nil {
		return Cluster{}, fmt.Errorf("cluster: %w", err)
	}
	prefixCaching := cfg.PrefixCaching
	for _, prefix := range []string{"profile:", "linear:"} {
		if file, ok := strings.CutPrefix(cs.Latency, prefix); ok {
			// Absolute, as the trace: spec.yaml lies in another directory.
			abs, err := filepath.Abs(file)
			if err != nil {
				return Cluster{}, err
			}
			cs.Latency = prefix + abs
		}
	}
	k := Cluster{
		Name: name, Instances: cfg.Instances, Model: cs.Model, GPU: cs.GPU, TP: cs.TP, Latency: cs.Latency,
		BlockSize: cfg.BlockSize, NumGPUBlocksOverride: cs.NumGPUBlocksOverride,
		GPUMemoryUtilization: cs.GPUMemoryUtilization, EnablePrefixCaching: &prefixCaching,
		MaxModelLen: cfg.MaxModelLen, ScrapeInterval: &cs.ScrapeInterval, KVEventDelay: &cs.KVEventDelay,
		GPUPricePerHour: cs.GPUPricePerHour, KVTiers: cs.KVTiers,
		PrefillRouter: cs.PrefillRouter, NonCachedTokens: cs.NonCachedTokens, KVLink: cs.KVLink,
		Autoscale: cs.Autoscale, ScaleUpDelay: cs.ScaleUpDelay,
		FlowControl: cs.FlowControl, Objectives: cs.Objectives,
	}
	if ab := s.cluster(name); ab.ABRouter != "" {
		// As written: ab_router names arm b in the cells' results, as a router names arm a.
		k.ABRouter, k.ABFraction = ab.ABRouter, ab.ABFraction
	}
	if cs.Autoscale != "" {
		k.Instances = 0 // the policy's; cfg.Instances are its slots
	}
	if len(cs.Pools) > 0 {
		// Each pool as it runs (role and tp filled in); instances, gpu and tp are theirs.
		k.Instances, k.Pools = 0, cs.ResolvedPools()
	}
	return k, nil
}

// ReplaceTrace points the workload at another trace file (relative to the working
// directory), replacing a trace or synthetic workload, and keeps its window, request limit
// and rate scales: `servelab run --trace` runs a shipped spec on the full trace.
func (s *Spec) ReplaceTrace(path, format string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("workload.trace: %w", err)
	}
	if format != "" && !slices.Contains(traces.Formats(), traces.Format(format)) {
		return fmt.Errorf("workload.format: %q: want one of %v", format, traces.Formats())
	}
	s.Workload.Trace, s.Workload.Format, s.Workload.Synthetic = abs, format, nil
	return nil
}
