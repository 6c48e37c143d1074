package main

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
)

func TestRouterABFlags(t *testing.T) {
	env := policies.Env{Seed: 3, BlockSize: 16}
	for _, tc := range []struct {
		spec, ab string
		fraction float64
		want     string // error substring; "" for none
	}{
		{"least-request", "", 0, ""},
		{"least-request", "prefix-affinity", 0.2, ""},
		{"least-request", "", 0.2, "--ab-fraction 0.2: needs --ab-router"},
		{"least-request", "random", -1, "--ab-fraction -1: want the share"},
		{"least-request", "random", math.NaN(), "--ab-fraction NaN"},
		{"least-request", "nope", 0.5, "--ab-router nope: arm b: unknown route policy"},
		{"least-request", "../../policies/route/testdata/llm-d-pd.yaml", 0.5, "cannot be an A/B arm"},
	} {
		f := routerFlags{spec: tc.spec, abSpec: tc.ab, abFraction: tc.fraction}
		p, err := f.policy(env)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("--router %s --ab-router %q --ab-fraction %v: %v", tc.spec, tc.ab, tc.fraction, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("--router %s --ab-router %q --ab-fraction %v: error %v, want %q", tc.spec, tc.ab, tc.fraction, err, tc.want)
		case tc.want == "" && tc.ab != "":
			if ab, ok := p.(*route.AB); !ok || ab.Split != (route.Split{Fraction: tc.fraction, Seed: 3}) {
				t.Errorf("--ab-router %s: policy %T %+v", tc.ab, p, p)
			}
		}
	}
}

func TestPrintArms(t *testing.T) {
	var buf bytes.Buffer
	printArms(&buf, metrics.Summary{}, nil, "")
	if buf.Len() != 0 {
		t.Errorf("a run without arms printed %q", buf.String())
	}
	s := metrics.Summary{Arms: map[string]*metrics.Summary{
		"a": {Completed: 7, MeanTTFTMs: 12.5},
		"b": {Completed: 3, MeanTTFTMs: 99.25},
	}}
	printArms(&buf, s, armSpecs("least-request", "prefix-affinity"), "")
	out := buf.String()
	for _, want := range []string{
		"Serving Benchmark Result (arm a: least-request)",
		"Serving Benchmark Result (arm b: prefix-affinity)",
		"A/B arms side by side",
		"Mean TTFT (ms):                          12.50         99.25",
		"Successful requests:                         7             3",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
