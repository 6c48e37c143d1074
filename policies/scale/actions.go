package scale

import "slices"

// State is a replica's place in its lifecycle.
type State int

// Replica states. A starting replica is loading its model and takes no requests; a ready
// one is routable; a draining one finishes the requests it has and takes no new ones, then
// stops (the Kubernetes pod's terminating phase, with the router's endpoint removed first).
const (
	Off State = iota
	Starting
	Ready
	Draining
)

func (s State) String() string {
	return [...]string{"off", "starting", "ready", "draining"}[s]
}

// Replica is one slot of a pool as the scaler sees it.
type Replica struct {
	State State
	// Since is when the replica entered its state (started, or became ready).
	Since float64
}

// Actions is how to move a pool to a decision's replicas: the slots to start (off ones),
// the starting ones to cancel (never ready, so nothing to drain), and the ready ones to
// drain. Both worlds apply the same Actions: the simulator to its instances, servelab up
// to its engine processes.
type Actions struct {
	Start, Cancel, Drain []int
}

// Plan returns the actions that take the pool in replicas to desired replicas (counting
// starting and ready ones; draining ones are on their way out and not counted). To grow it
// starts the lowest-numbered off slots; if there are too few, it starts what it can (the
// caller may add slots: indices from len(replicas) on are taken as off). To shrink it
// cancels starting replicas first, the most recently started first, then drains ready
// ones, the most recently ready first, as a Kubernetes ReplicaSet picks the pods to delete
// (unready before ready, newer before older; pkg/controller/replicaset
// getPodsToDelete).
func Plan(replicas []Replica, desired, slots int) Actions {
	var a Actions
	cur := 0
	for _, r := range replicas {
		if r.State == Starting || r.State == Ready {
			cur++
		}
	}
	switch {
	case desired > cur:
		need := desired - cur
		for i := 0; i < slots && need > 0; i++ {
			if i >= len(replicas) || replicas[i].State == Off {
				a.Start = append(a.Start, i)
				need--
			}
		}
	case desired < cur:
		drop := cur - desired
		byRecency := func(st State) []int {
			var ids []int
			for i, r := range replicas {
				if r.State == st {
					ids = append(ids, i)
				}
			}
			// Most recent first; ties: the highest slot first.
			slices.SortStableFunc(ids, func(x, y int) int {
				switch {
				case replicas[x].Since > replicas[y].Since:
					return -1
				case replicas[x].Since < replicas[y].Since:
					return 1
				}
				return y - x
			})
			return ids
		}
		for _, i := range byRecency(Starting) {
			if drop == 0 {
				break
			}
			a.Cancel = append(a.Cancel, i)
			drop--
		}
		for _, i := range byRecency(Ready) {
			if drop == 0 {
				break
			}
			a.Drain = append(a.Drain, i)
			drop--
		}
	}
	return a
}

// Scaler runs a policy over a pool's replicas: the one piece of bookkeeping the simulator
// and servelab up share, so the same observations give the same decisions and the same
// actions in both worlds. The caller reports readiness and stops; Observe decides and
// applies the decision's actions to the replicas' states. Not safe for concurrent use.
type Scaler struct {
	policy   Policy
	replicas []Replica
	slots    int
}

// NewScaler returns a scaler of at most slots replica slots (starting, ready and draining
// together) whose pool starts at the policy's min-replicas, ready at now.
func NewScaler(p Policy, slots int, now float64) *Scaler {
	lo, _ := p.Bounds()
	s := &Scaler{policy: p, slots: slots, replicas: make([]Replica, slots)}
	for i := range min(lo, slots) {
		s.replicas[i] = Replica{State: Ready, Since: now}
	}
	return s
}

// Policy returns the scaler's policy.
func (s *Scaler) Policy() Policy { return s.policy }

// Replicas returns the replicas' states, indexed by slot; the slice is the scaler's own.
func (s *Scaler) Replicas() []Replica { return s.replicas }

// Count returns the replicas in the given state.
func (s *Scaler) Count(st State) int {
	n := 0
	for _, r := range s.replicas {
		if r.State == st {
			n++
		}
	}
	return n
}

// Observe fills o's Replicas and Ready from the replicas' states, asks the policy, and
// applies the decision: started slots become Starting, cancelled ones Off, drained ones
// Draining, all as of o.Time. It returns the observation as the policy saw it.
func (s *Scaler) Observe(o Observation) (Observation, Decision, Actions) {
	o.Ready = s.Count(Ready)
	o.Replicas = o.Ready + s.Count(Starting)
	d := s.policy.Decide(o)
	a := Plan(s.replicas, d.Replicas, s.slots)
	for _, i := range a.Start {
		s.replicas[i] = Replica{State: Starting, Since: o.Time}
	}
	for _, i := range a.Cancel {
		s.replicas[i] = Replica{State: Off, Since: o.Time}
	}
	for _, i := range a.Drain {
		s.replicas[i] = Replica{State: Draining, Since: o.Time}
	}
	return o, d, a
}

// MarkReady records that starting slot i became ready (routable) at t; a slot that is no
// longer starting (cancelled meanwhile) is left alone and false returned.
func (s *Scaler) MarkReady(i int, t float64) bool {
	if s.replicas[i].State != Starting {
		return false
	}
	s.replicas[i] = Replica{State: Ready, Since: t}
	return true
}

// Restarting records that ready slot i stopped being ready at t without leaving the pool:
// its process crashed and is being restarted in place (servelab up's supervisor), as a
// Kubernetes pod whose container restarts stays in its ReplicaSet, unready. It counts as
// starting until MarkReady, so it is still one of the pool's replicas (nothing starts in its
// place) but not a ready one, and a scale-down cancels it before draining a ready one, as a
// ReplicaSet deletes unready pods first. A slot that is not ready (draining: on its way out
// anyway) is left alone and false returned.
func (s *Scaler) Restarting(i int, t float64) bool {
	if s.replicas[i].State != Ready {
		return false
	}
	s.replicas[i] = Replica{State: Starting, Since: t}
	return true
}

// Stopped records that slot i stopped at t: a draining replica that finished its
// requests, or a starting one that failed to come up (or, restarting, was given up).
func (s *Scaler) Stopped(i int, t float64) {
	if st := s.replicas[i].State; st == Draining || st == Starting {
		s.replicas[i] = Replica{State: Off, Since: t}
	}
}
