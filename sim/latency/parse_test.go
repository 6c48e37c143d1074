package latency

import (
	"strings"
	"testing"
)

func TestParseRooflineParameters(t *testing.T) {
	m, err := Parse("roofline:mfu=0.5,bandwidth_efficiency=0.9,overhead_ms=2,allreduce_us=20,activation_reserve_gib=3", "h100", "llama-3.1-70b", 4)
	if err != nil {
		t.Fatal(err)
	}
	got := m.(*Roofline).opts
	want := RooflineOptions{MFU: 0.5, BandwidthEfficiency: 0.9, StepOverhead: 2e-3, AllReduceLatency: 20e-6, ActivationReserveGiB: 3}
	if !within(got.StepOverhead, want.StepOverhead, 1e-12) || !within(got.AllReduceLatency, want.AllReduceLatency, 1e-12) ||
		got.MFU != want.MFU || got.BandwidthEfficiency != want.BandwidthEfficiency || got.ActivationReserveGiB != want.ActivationReserveGiB {
		t.Errorf("options %+v, want %+v", got, want)
	}
	if !strings.Contains(m.Name(), "llama-3.1-70b") || !strings.Contains(m.Name(), "4x h100") {
		t.Errorf("name %q", m.Name())
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ spec, gpu, model, want string }{
		{"roofline", "tpu", "llama-3.1-8b", "tpu"},
		{"roofline", "h100", "gpt-9", "gpt-9"},
		{"roofline:mfu=2", "h100", "llama-3.1-8b", "efficiencies"},
		{"roofline:mfu=fast", "h100", "llama-3.1-8b", "mfu"},
		{"roofline:overhead_ms=-1", "h100", "llama-3.1-8b", "non-negative"},
		{"roofline:speed=2", "h100", "llama-3.1-8b", "speed"},
		{"magic", "h100", "llama-3.1-8b", "magic"},
		{"profile:/no/such/file.json", "", "", "/no/such/file.json"},
		{"linear:/no/such/file.json", "", "", "/no/such/file.json"},
		{"linear:testdata/tiny-config.json", "", "", `"architectures"`},
	} {
		_, err := Parse(tc.spec, tc.gpu, tc.model, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q, %q, %q): %v, want an error naming %q", tc.spec, tc.gpu, tc.model, err, tc.want)
		}
	}
}
