package latency

import (
	"fmt"
	"strings"

	"servelab/policies"
)

// Parse builds a latency model from a spec:
//
//   - "roofline", optionally with parameters mfu, bandwidth_efficiency, overhead_ms,
//     allreduce_us and activation_reserve_gib ("roofline:mfu=0.5,overhead_ms=2"), for
//     the named GPU, model and tensor parallelism (see DefaultRooflineOptions);
//   - "profile:FILE", a Profile of the real engine;
//   - "linear:FILE", a Profile or a bare LinearCoefficients object.
//
// gpu, model and tp are only used by roofline.
func Parse(spec, gpu, model string, tp int) (Model, error) {
	if file, ok := strings.CutPrefix(spec, "profile:"); ok {
		p, err := LoadProfile(file)
		if err != nil {
			return nil, err
		}
		return p.StepModel(), nil
	}
	if file, ok := strings.CutPrefix(spec, "linear:"); ok {
		return LoadLinear(file)
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
	opts.AllReduceLatency = p.Float("allreduce_us", opts.AllReduceLatency*1e6) / 1e6
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
