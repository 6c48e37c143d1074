package main

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"

	"github.com/spf13/pflag"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
)

// abFlagsHelp documents the A/B flags of sim, router and up.
const abFlagsHelp = `A/B test of two routing policies: --ab-router SPEC routes a share of the requests, --ab-fraction F
(0 to 1), with a second policy over the same views (arm b; --router's policy is arm a). A request's
arm is a hash of --seed and its id: in the simulator the trace row index, through the router the
client's x-request-id (servelab bench sends the row index, so a replay splits as the simulator
did), else the router's own count; a client pins an arm with the header x-servelab-arm: a|b. The
router names the arm on every response (x-servelab-arm) and labels its servelab_router_arm_*
metrics with it; servelab bench and servelab sim print a summary per arm.`

// printArms prints, after a run's summary, each A/B arm's summary under the same names
// (one block per arm, titled by specs[arm] where known) and the arms side by side.
func printArms(w io.Writer, s metrics.Summary, specs map[string]string, hitRate string) {
	if len(s.Arms) == 0 {
		return
	}
	arms := slices.Sorted(maps.Keys(s.Arms))
	for _, arm := range arms {
		title := "arm " + arm
		if spec := specs[arm]; spec != "" {
			title += ": " + spec
		}
		printSummary(w, title, *s.Arms[arm], -1, hitRate)
	}
	fmt.Fprintf(w, "%s\n", center(" A/B arms side by side ", 60, '='))
	fmt.Fprintf(w, "%-32s", "")
	for _, arm := range arms {
		fmt.Fprintf(w, " %13s", "arm "+arm)
	}
	fmt.Fprintln(w)
	rows := []struct {
		name string
		get  func(*metrics.Summary) float64
		f    string
	}{
		{"Successful requests", func(s *metrics.Summary) float64 { return float64(s.Completed) }, "%13.0f"},
		{"Failed requests", func(s *metrics.Summary) float64 { return float64(s.Failed) }, "%13.0f"},
		{"Request throughput (req/s)", func(s *metrics.Summary) float64 { return s.RequestThroughput }, "%13.2f"},
		{"Request goodput (req/s)", func(s *metrics.Summary) float64 { return s.RequestGoodput }, "%13.2f"},
		{"Output token throughput (tok/s)", func(s *metrics.Summary) float64 { return s.OutputThroughput }, "%13.2f"},
		{"Mean TTFT (ms)", func(s *metrics.Summary) float64 { return s.MeanTTFTMs }, "%13.2f"},
		{"P99 TTFT (ms)", func(s *metrics.Summary) float64 { return s.P99TTFTMs }, "%13.2f"},
		{"Mean TPOT (ms)", func(s *metrics.Summary) float64 { return s.MeanTPOTMs }, "%13.2f"},
		{"P99 TPOT (ms)", func(s *metrics.Summary) float64 { return s.P99TPOTMs }, "%13.2f"},
		{"Mean ITL (ms)", func(s *metrics.Summary) float64 { return s.MeanITLMs }, "%13.2f"},
		{"Mean E2EL (ms)", func(s *metrics.Summary) float64 { return s.MeanE2ELMs }, "%13.2f"},
		{"P99 E2EL (ms)", func(s *metrics.Summary) float64 { return s.P99E2ELMs }, "%13.2f"},
		{"Prefix cache hit rate (%)", func(s *metrics.Summary) float64 { return 100 * s.PrefixCacheHitRate }, "%13.2f"},
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%-32s", r.name+":")
		for _, arm := range arms {
			fmt.Fprintf(w, " "+r.f, r.get(s.Arms[arm]))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "%s\n", center("", 60, '='))
}

// armSpecs names each arm's routing policy, for printArms' titles.
func armSpecs(a, b string) map[string]string {
	if b == "" {
		return nil
	}
	return map[string]string{serving.ArmA: a, serving.ArmB: b}
}

// policy builds the router's policy: --router's, or an A/B test of it (arm a) and
// --ab-router's (arm b) with --ab-fraction of the requests in arm b.
func (f *routerFlags) policy(env policies.Env) (route.Policy, error) {
	switch {
	case f.abSpec == "" && f.abFraction != 0:
		return nil, fmt.Errorf("--ab-fraction %v: needs --ab-router, the routing policy of arm b", f.abFraction)
	case f.abSpec != "" && (math.IsNaN(f.abFraction) || f.abFraction < 0 || f.abFraction > 1):
		return nil, fmt.Errorf("--ab-fraction %v: want the share of requests routed by --ab-router, from 0 to 1", f.abFraction)
	}
	p, err := route.ParseAB(f.spec, f.abSpec, f.abFraction, env)
	if err != nil && f.abSpec != "" {
		return nil, fmt.Errorf("--router %s, --ab-router %s: %w", f.spec, f.abSpec, err)
	}
	return p, err
}

// describePolicy is the policy as the router's start line names it.
func (f *routerFlags) describePolicy() string {
	if f.abSpec == "" {
		return f.spec
	}
	return fmt.Sprintf("A/B: arm a %s, arm b %s for %g of requests", f.spec, f.abSpec, f.abFraction)
}

// addABFlags registers --ab-router and --ab-fraction.
func (f *routerFlags) addABFlags(fl *pflag.FlagSet) {
	fl.StringVar(&f.abSpec, "ab-router", "", "A/B test: route --ab-fraction of the requests (arm b) with this routing policy spec or EndpointPickerConfig file, the rest (arm a) with --router; responses carry x-servelab-arm, metrics servelab_router_arm_*{arm}")
	fl.Float64Var(&f.abFraction, "ab-fraction", 0, "with --ab-router: the share of requests in arm b, 0 to 1, by a hash of --seed and the request's x-request-id (servelab sim --ab-fraction splits a trace the same way); x-servelab-arm: a|b on a request chooses")
}
