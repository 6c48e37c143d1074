package sim

import (
	"fmt"
	"math"

	"servelab/policies"
	"servelab/policies/scale"
)

// autoscale builds the cluster's scaling policy, when it has one, and gives its one pool
// the instance slots the policy may fill: twice max-replicas, so instances still draining
// never keep the pool from reaching its max.
func (c ClusterSpec) autoscale(pools []resolvedPool) (*Autoscale, error) {
	if c.Autoscale == "" {
		if c.ScaleUpDelay != 0 {
			return nil, fmt.Errorf("scale_up_delay_s: set without autoscale")
		}
		return nil, nil
	}
	if len(pools) != 1 || pools[0].Role == RolePrefill {
		return nil, fmt.Errorf("autoscale: scales one pool of instances; this cluster has %d pools", len(pools))
	}
	if d := c.ScaleUpDelay; d < 0 || math.IsNaN(d) || math.IsInf(d, 0) {
		return nil, fmt.Errorf("scale_up_delay_s: must be 0 or a positive number of seconds, got %v", d)
	}
	pol, err := scale.Parse(c.Autoscale, policies.Env{Seed: c.Seed})
	if err != nil {
		return nil, fmt.Errorf("autoscale: %w", err)
	}
	_, hi := pol.Bounds()
	pools[0].Instances = 2 * hi
	return &Autoscale{Policy: pol, ScaleUpDelay: c.ScaleUpDelay}, nil
}
