package policies

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Spec names a policy and its parameters.
type Spec struct {
	Name   string            `json:"name"`
	Params map[string]string `json:"params,omitempty"`
}

// String renders the spec in its compact form, parameters sorted by key, so equal specs
// print equally.
func (s Spec) String() string {
	if len(s.Params) == 0 {
		return s.Name
	}
	var b strings.Builder
	b.WriteString(s.Name)
	b.WriteByte(':')
	for i, k := range slices.Sorted(maps.Keys(s.Params)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(s.Params[k])
	}
	return b.String()
}

// ParseSpec reads "name" or "name:key=value,key=value".
func ParseSpec(text string) (Spec, error) {
	text = strings.TrimSpace(text)
	name, rest, hasParams := strings.Cut(text, ":")
	name = strings.TrimSpace(name)
	if name == "" {
		return Spec{}, fmt.Errorf("policy spec %q: missing policy name", text)
	}
	spec := Spec{Name: name}
	if !hasParams || strings.TrimSpace(rest) == "" {
		return spec, nil
	}
	spec.Params = map[string]string{}
	for _, kv := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return Spec{}, fmt.Errorf("policy spec %q: parameter %q is not key=value", text, kv)
		}
		if _, dup := spec.Params[k]; dup {
			return Spec{}, fmt.Errorf("policy spec %q: parameter %q given twice", text, k)
		}
		spec.Params[k] = v
	}
	return spec, nil
}

// ParseYAMLSpec reads a spec written as YAML: either the compact string form or a mapping
// {name: NAME, params: {key: value}}. Unknown keys are errors.
func ParseYAMLSpec(data []byte) (Spec, error) {
	var compact string
	if err := yaml.Unmarshal(data, &compact); err == nil && compact != "" {
		return ParseSpec(compact)
	}
	var raw struct {
		Name   string         `json:"name"`
		Params map[string]any `json:"params,omitempty"`
	}
	if err := yaml.UnmarshalStrict(data, &raw); err != nil {
		return Spec{}, fmt.Errorf("policy spec: %w", err)
	}
	if raw.Name == "" {
		return Spec{}, fmt.Errorf("policy spec: missing field \"name\"")
	}
	spec := Spec{Name: raw.Name}
	if len(raw.Params) > 0 {
		spec.Params = make(map[string]string, len(raw.Params))
		for k, v := range raw.Params {
			spec.Params[k] = fmt.Sprint(v)
		}
	}
	return spec, nil
}

// Param documents one parameter of a policy.
type Param struct {
	Name    string
	Default string
	Doc     string
}

// Params gives typed access to a spec's parameters. Getters fall back to the default when
// a key is absent and record the first malformed value; Err reports it, together with any
// key the policy never asked for, so a typo in a spec is an error rather than ignored.
type Params struct {
	policy string
	values map[string]string
	used   map[string]bool
	// resolved holds every parameter a getter read, at the value the policy got: the
	// spec's own or the default, written as ParseSpec reads it back.
	resolved map[string]string
	err      error
}

// NewParams wraps a spec's parameters for the policy named in it.
func NewParams(spec Spec) *Params {
	return &Params{policy: spec.Name, values: spec.Params, used: map[string]bool{}, resolved: map[string]string{}}
}

// Resolved returns the spec the policy was actually built with: its name and every
// parameter a getter read, at the value it returned, defaults included. Building the
// resolved spec again gives the same policy whatever the Env, so it is what an engine
// reports and what a simulator of that engine must run.
func (p *Params) Resolved() Spec {
	s := Spec{Name: p.policy}
	if len(p.resolved) > 0 {
		s.Params = maps.Clone(p.resolved)
	}
	return s
}

func (p *Params) resolve(key, value string) { p.resolved[key] = value }

func (p *Params) lookup(key string) (string, bool) {
	p.used[key] = true
	v, ok := p.values[key]
	return v, ok
}

func (p *Params) fail(key, value, want string) {
	if p.err == nil {
		p.err = fmt.Errorf("policy %q: parameter %q: %q is not %s", p.policy, key, value, want)
	}
}

// Float returns a float parameter.
func (p *Params) Float(key string, def float64) float64 {
	f := def
	if v, ok := p.lookup(key); ok {
		var err error
		if f, err = strconv.ParseFloat(v, 64); err != nil {
			p.fail(key, v, "a number")
			f = def
		}
	}
	p.resolve(key, strconv.FormatFloat(f, 'g', -1, 64))
	return f
}

// Int returns an integer parameter.
func (p *Params) Int(key string, def int) int {
	i := def
	if v, ok := p.lookup(key); ok {
		var err error
		if i, err = strconv.Atoi(v); err != nil {
			p.fail(key, v, "an integer")
			i = def
		}
	}
	p.resolve(key, strconv.Itoa(i))
	return i
}

// Bool returns a boolean parameter.
func (p *Params) Bool(key string, def bool) bool {
	b := def
	if v, ok := p.lookup(key); ok {
		var err error
		if b, err = strconv.ParseBool(v); err != nil {
			p.fail(key, v, "a boolean")
			b = def
		}
	}
	p.resolve(key, strconv.FormatBool(b))
	return b
}

// String returns a string parameter.
func (p *Params) String(key, def string) string {
	v, ok := p.lookup(key)
	if !ok {
		v = def
	}
	p.resolve(key, v)
	return v
}

// Has reports whether the spec set key. It records nothing in Resolved: a parameter only
// Has asks about must also be read through a getter to appear there.
func (p *Params) Has(key string) bool {
	p.used[key] = true
	_, ok := p.values[key]
	return ok
}

// Check records an error about a parameter's value that the policy found out of range.
func (p *Params) Check(ok bool, key, want string) {
	if !ok {
		p.fail(key, p.values[key], want)
	}
}

// Err returns the first malformed parameter, or an error naming parameters no getter asked
// for.
func (p *Params) Err() error {
	if p.err != nil {
		return p.err
	}
	var unknown []string
	for k := range p.values {
		if !p.used[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("policy %q: unknown parameter(s) %s", p.policy, strings.Join(unknown, ", "))
	}
	return nil
}
