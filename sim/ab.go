package sim

import (
	"errors"
	"fmt"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
)

// An A/B test of routing policies (Config.Router a *route.AB) runs as the real router runs
// it: each arriving request gets the arm route.Split gives its id (the trace row index,
// the x-request-id servelab bench sends), is routed by that arm's policy over the same
// views, and its record carries the arm, so the summary reports each arm apart
// (metrics.Summary.Arms) as servelab bench does behind the router.

func (s *simulation) initAB() error {
	if _, ok := s.cfg.Router.(*route.AB); !ok {
		return nil
	}
	if s.cfg.Disagg != nil {
		return errors.New("sim: an A/B test of routing policies cannot run in a disaggregated cluster")
	}
	s.arms = metrics.NewArms(s.cfg.SLO)
	return nil
}

// assignArm sets req's arm before anything else sees it, so a request refused before
// routing is counted in its arm too, as the router counts the engine's refusal.
func (s *simulation) assignArm(req *serving.Request) {
	if ab, ok := s.cfg.Router.(*route.AB); ok {
		ab.Assign(req)
	}
}

// abRouter makes router (the policy of the spec's router key) arm a of an A/B test with
// ab_router's policy as arm b, when ab_router is set.
func (c ClusterSpec) abRouter(env policies.Env, router route.Policy, pd, disagg bool) (route.Policy, error) {
	if c.ABRouter == "" {
		if c.ABFraction != 0 {
			return nil, fmt.Errorf("ab_fraction: %v without ab_router, the routing policy of arm b", c.ABFraction)
		}
		return router, nil
	}
	switch {
	case pd:
		return nil, fmt.Errorf("ab_router: router %s is a P/D EndpointPickerConfig, which cannot be an A/B arm", c.Router)
	case disagg:
		return nil, errors.New("ab_router: an A/B test of routing policies cannot run in a disaggregated cluster (a pool has role prefill)")
	}
	b, err := route.Parse(c.ABRouter, env)
	if err != nil {
		return nil, fmt.Errorf("ab_router: %w", err)
	}
	if _, ok := b.(*route.PDProfileHandler); ok {
		return nil, fmt.Errorf("ab_router: %s is a P/D EndpointPickerConfig, which cannot be an A/B arm", c.ABRouter)
	}
	// servelab router follows the endpoints' KV events once for both arms, as their files'
	// kvEventsConfigs say, and refuses two files that disagree (arm b's file with two
	// kvEventsConfigs Parse has refused, as it refuses arm a's); the simulator refuses them
	// too, so an A/B test runs in both worlds or in neither.
	if _, err := route.EndpointPickerKVEventsFiles(c.Router, c.ABRouter); err != nil {
		return nil, fmt.Errorf("ab_router: %w", err)
	}
	ab, err := route.NewAB(router, b, c.ABFraction)
	if err != nil {
		return nil, fmt.Errorf("ab_fraction: %w", err)
	}
	ab.Split.Seed = c.Seed
	return ab, nil
}
