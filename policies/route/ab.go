package route

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"

	"servelab/policies"
	"servelab/serving"
)

// Split assigns requests to the two arms of an A/B test of routing policies: a request is
// in arm b (serving.ArmB) with probability Fraction, else in arm a, decided by a hash of
// the seed and the request's key alone. The same seed and key always give the same arm,
// whatever else arrives and in whatever order, so a replayed trace splits the same way in
// the simulator (the key is the trace row index, serving.Request.ID) and through the real
// router (the key is the x-request-id servelab bench sends: the same row index; see
// SplitKey). x-request-id is the id Envoy keys its stable per-request decisions on (trace
// sampling), so a request keeps its arm however often it is replayed.
type Split struct {
	// Fraction is the share of requests in arm b, from 0 (none) to 1 (all); like the
	// weight of a canary's backendRef in an HTTPRoute, or KServe's canaryTrafficPercent/100.
	Fraction float64
	Seed     uint64
}

// Arm returns the arm of the request with the given key.
func (s Split) Arm(key uint64) string {
	h := mix64(key ^ mix64(s.Seed^0x5e7e1ab5a17c0de5))
	// The top 53 bits as a uniform number in [0, 1).
	if float64(h>>11)/(1<<53) < s.Fraction {
		return serving.ArmB
	}
	return serving.ArmA
}

// mix64 is splitmix64's finaliser: a bijection of uint64 whose outputs of nearby inputs
// look independent, so consecutive request ids split like independent draws.
func mix64(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// SplitKey is the split key of a request id as a client sends it (x-request-id): a
// decimal number is itself, so the id servelab bench sends for trace row N has the key
// the simulator uses for row N; any other string (a UUID, as Envoy generates) is its
// 64-bit FNV-1a hash.
func SplitKey(id string) uint64 {
	if n, err := strconv.ParseUint(id, 10, 64); err == nil {
		return n
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64()
}

// ParseArm reads an arm's name as a client gives it (serving.ArmHeader): a or b, in either
// case.
func ParseArm(s string) (string, error) {
	switch s {
	case serving.ArmA, "A":
		return serving.ArmA, nil
	case serving.ArmB, "B":
		return serving.ArmB, nil
	}
	return "", fmt.Errorf("%s %q: want %s (the --router policy) or %s (the --ab-router policy)", serving.ArmHeader, s, serving.ArmA, serving.ArmB)
}

// AB is an online A/B test of two routing policies: each request is routed by the policy
// of its arm, A or B, over the same instance views; the arms keep their own state (a
// prefix-affinity index learns only the requests its arm routed). The simulator and the
// real router run the same object, so they split a trace alike.
type AB struct {
	A, B  Policy
	Split Split
}

// NewAB checks and assembles an A/B test. P/D configurations cannot be arms: the real
// router runs their two legs outside the policy.
func NewAB(a, b Policy, fraction float64) (*AB, error) {
	if math.IsNaN(fraction) || fraction < 0 || fraction > 1 {
		return nil, fmt.Errorf("fraction %v: want the share of requests in arm b, from 0 to 1", fraction)
	}
	for _, p := range []struct {
		arm string
		pol Policy
	}{{serving.ArmA, a}, {serving.ArmB, b}} {
		switch p.pol.(type) {
		case nil:
			return nil, fmt.Errorf("arm %s: no policy", p.arm)
		case *PDProfileHandler:
			return nil, fmt.Errorf("arm %s: a P/D EndpointPickerConfig cannot be an A/B arm (its prefill leg runs outside the routing policy)", p.arm)
		case *AB:
			return nil, errors.New("an A/B test cannot be an arm of another")
		}
	}
	return &AB{A: a, B: b, Split: Split{Fraction: fraction}}, nil
}

// Assign returns req's arm, setting req.Arm from the split when it has none (a router
// sets it first from serving.ArmHeader or x-request-id).
func (p *AB) Assign(req *serving.Request) string {
	if req.Arm == "" {
		req.Arm = p.Split.Arm(req.ID)
	}
	return req.Arm
}

// Route routes req with its arm's policy.
func (p *AB) Route(req *serving.Request, views []serving.InstanceView) int {
	if p.Assign(req) == serving.ArmB {
		return p.B.Route(req, views)
	}
	return p.A.Route(req, views)
}

// ParseAB builds the policy of spec a alone, or, when spec b is set, an A/B test of the
// two with fraction of the requests in arm b, split with env's seed. Each spec is what
// Parse reads (a compact spec or an EndpointPickerConfig file); errors name the arm.
func ParseAB(a, b string, fraction float64, env policies.Env) (Policy, error) {
	pa, err := Parse(a, env)
	if err != nil {
		return nil, err
	}
	if b == "" {
		if fraction != 0 {
			return nil, fmt.Errorf("an A/B fraction (%v) without a policy for arm b", fraction)
		}
		return pa, nil
	}
	pb, err := Parse(b, env)
	if err != nil {
		return nil, fmt.Errorf("arm b: %w", err)
	}
	ab, err := NewAB(pa, pb, fraction)
	if err != nil {
		return nil, err
	}
	ab.Split.Seed = env.Seed
	return ab, nil
}

// RemoveInstance implements InstanceRemover: each arm that keeps state per instance drops
// the instance's.
func (p *AB) RemoveInstance(instance int) {
	for _, q := range []Policy{p.A, p.B} {
		if rm, ok := q.(InstanceRemover); ok {
			rm.RemoveInstance(instance)
		}
	}
}
