package policies

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"servelab/serving"
)

// Env is what a policy may be built with besides its parameters: a seed for any
// randomness, and facts about the cluster or engine it serves.
type Env struct {
	// Seed seeds the policy's own random source; the same seed gives the same decisions.
	Seed uint64
	// BlockSize is the engine's KV block size in tokens.
	BlockSize int
	// GPUClass is "h100" for H100-class GPUs (H100, H200) and "" otherwise; vLLM picks its
	// batching defaults by it.
	GPUClass string
	// StepTime is the serving engine's step-time model, for policies that predict latency
	// (route's predicted-latency-scorer): the simulator's latency model, or in the real
	// router a profile of the real engine (servelab router --latency-profile). Nil when
	// none is known.
	StepTime serving.StepTimeModel
	// MaxNumBatchedTokens is the engines' step token budget (vLLM's
	// --max-num-batched-tokens) where known, for policies that predict latency; 0 when not.
	MaxNumBatchedTokens int
	// TTFTSLO and AvgTPOTSLO are the latency objectives in seconds of requests that carry
	// none (an experiment's slo); 0 for none.
	TTFTSLO, AvgTPOTSLO float64
}

// Entry describes one policy in a registry.
type Entry[T any] struct {
	Name   string
	Doc    string
	Params []Param
	// New builds the policy; it reads its parameters through p and must not keep p.
	New func(p *Params, env Env) (T, error)
}

// Registry maps policy names to constructors.
type Registry[T any] struct {
	kind    string
	entries map[string]Entry[T]
}

// NewRegistry returns an empty registry for policies of the given kind ("route", ...).
func NewRegistry[T any](kind string) *Registry[T] {
	return &Registry[T]{kind: kind, entries: map[string]Entry[T]{}}
}

// Register adds a policy; registering a name twice is a programming error.
func (r *Registry[T]) Register(e Entry[T]) {
	if _, dup := r.entries[e.Name]; dup {
		panic(fmt.Sprintf("%s policy %q registered twice", r.kind, e.Name))
	}
	r.entries[e.Name] = e
}

// Build makes the policy a spec names.
func (r *Registry[T]) Build(spec Spec, env Env) (T, error) {
	pol, _, err := r.Resolve(spec, env)
	return pol, err
}

// Resolve builds the policy a spec names and returns, besides, its resolved spec: every
// parameter it read, defaults included (Params.Resolved).
func (r *Registry[T]) Resolve(spec Spec, env Env) (T, Spec, error) {
	var zero T
	e, ok := r.entries[spec.Name]
	if !ok {
		return zero, Spec{}, fmt.Errorf("unknown %s policy %q (known: %s)", r.kind, spec.Name, strings.Join(r.Names(), ", "))
	}
	p := NewParams(spec)
	pol, err := e.New(p, env)
	if err != nil {
		return zero, Spec{}, err
	}
	if err := p.Err(); err != nil {
		return zero, Spec{}, err
	}
	return pol, p.Resolved(), nil
}

// Parse parses a compact spec and builds it.
func (r *Registry[T]) Parse(text string, env Env) (T, Spec, error) {
	spec, err := ParseSpec(text)
	if err != nil {
		var zero T
		return zero, spec, err
	}
	pol, err := r.Build(spec, env)
	return pol, spec, err
}

// Names lists the registered policies, sorted.
func (r *Registry[T]) Names() []string { return slices.Sorted(maps.Keys(r.entries)) }

// Entries lists the registered policies sorted by name.
func (r *Registry[T]) Entries() []Entry[T] {
	out := make([]Entry[T], 0, len(r.entries))
	for _, n := range r.Names() {
		out = append(out, r.entries[n])
	}
	return out
}

// Help describes every policy and its parameters, for a command's --help.
func (r *Registry[T]) Help() string {
	var b strings.Builder
	for _, e := range r.Entries() {
		fmt.Fprintf(&b, "  %-18s %s\n", e.Name, e.Doc)
		for _, p := range e.Params {
			def := p.Default
			if def == "" {
				def = `""`
			}
			fmt.Fprintf(&b, "      %-14s %s (default %s)\n", p.Name, p.Doc, def)
		}
	}
	return b.String()
}
