package latency

import (
	"fmt"
	"strings"

	"servelab/policies"
)

// Parse builds a model from a spec: "roofline" (with optional parameters mfu,
// bandwidth_efficiency, overhead_ms, activation_reserve_gib) for the named GPU, model and
// tensor parallelism, or "linear:FILE" / "profile:FILE" for a profile of the real engine.
func Parse(spec, gpu, model string, tp int) (Model, error) {
	for _, prefix := range []string{"linear:", "profile:"} {
		if file, ok := strings.CutPrefix(spec, prefix); ok {
			p, err := LoadProfile(file)
			if err != nil {
				return nil, err
			}
			return p.StepModel(), nil
		}
	}
	s, err := policies.ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	if s.Name != "roofline" {
		return nil, fmt.Errorf("unknown latency model %q (want roofline, linear:FILE or profile:FILE)", s.Name)
	}
	p := policies.NewParams(s)
	opts := DefaultRooflineOptions()
	opts.MFU = p.Float("mfu", opts.MFU)
	opts.BandwidthEfficiency = p.Float("bandwidth_efficiency", opts.BandwidthEfficiency)
	opts.StepOverhead = p.Float("overhead_ms", opts.StepOverhead*1e3) / 1e3
	opts.ActivationReserveGiB = p.Float("activation_reserve_gib", opts.ActivationReserveGiB)
	if err := p.Err(); err != nil {
		return nil, err
	}
	g, err := LookupGPU(gpu)
	if err != nil {
		return nil, err
	}
	m, err := LookupModel(model)
	if err != nil {
		return nil, err
	}
	return NewRoofline(g, m, tp, opts)
}
