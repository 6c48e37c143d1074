package route

import (
	"cmp"
	"math/rand/v2"

	"servelab/serving"
)

// Every policy here returns -1 when it is given no views; callers route only when at least
// one instance is up.

// newRand returns a policy's own random source: a PCG stream keyed by the seed and by the
// policy's name, so two policies built from one seed do not draw the same numbers.
func newRand(seed uint64, policy string) *rand.Rand {
	// FNV-1a of the name: a fixed, documented salt rather than anything process-dependent.
	salt := uint64(0xcbf29ce484222325)
	for i := 0; i < len(policy); i++ {
		salt ^= uint64(policy[i])
		salt *= 0x100000001b3
	}
	return rand.New(rand.NewPCG(seed, salt))
}

// leastBy returns the position of the view with the smallest key. Ties are broken by a
// uniform draw from rng among the tied views, so equal instances share traffic instead of
// the first one taking it all while views are stale; rng is drawn from only on a tie.
func leastBy[K cmp.Ordered](views []serving.InstanceView, rng *rand.Rand, key func(*serving.InstanceView) K) int {
	if len(views) == 0 {
		return -1
	}
	best, ties := key(&views[0]), 1
	for i := 1; i < len(views); i++ {
		switch k := key(&views[i]); {
		case k < best:
			best, ties = k, 1
		case k == best:
			ties++
		}
	}
	if ties == 1 {
		for i := range views {
			if key(&views[i]) == best {
				return i
			}
		}
	}
	r := rng.IntN(ties)
	for i := range views {
		if key(&views[i]) == best {
			if r == 0 {
				return i
			}
			r--
		}
	}
	panic("unreachable")
}

// maxScore returns the position of the highest score, choosing uniformly with rng among
// equal maxima: GIE's max-score-picker (pkg/epp/scheduling/framework/plugins/picker/
// max_score_picker.go @02308be307b2) shuffles the candidates, then sorts them stably by
// score and keeps the first, which is a uniform draw among exactly equal totals and never
// a near-tie. GIE shuffles with a time-seeded source (picker/common.go @21e928369cc3); ours
// is the policy's seeded one, so runs repeat.
func maxScore(scores []float64, rng *rand.Rand) int {
	if len(scores) == 0 {
		return -1
	}
	best, ties := scores[0], 1
	for _, s := range scores[1:] {
		switch {
		case s > best:
			best, ties = s, 1
		case s == best:
			ties++
		}
	}
	r := 0
	if ties > 1 {
		r = rng.IntN(ties)
	}
	for i, s := range scores {
		if s == best {
			if r == 0 {
				return i
			}
			r--
		}
	}
	panic("unreachable")
}

// weightedDraw picks a position with probability proportional to its score, ignoring
// scores that are not positive, and uniformly when none is positive: GIE's
// weighted-random-picker for one endpoint (its A-Res keys u^(1/w) give the largest key to
// position i with probability w_i / sum w).
func weightedDraw(scores []float64, rng *rand.Rand) int {
	if len(scores) == 0 {
		return -1
	}
	var sum float64
	last := -1
	for i, s := range scores {
		if s > 0 {
			sum += s
			last = i
		}
	}
	if last < 0 {
		return rng.IntN(len(scores))
	}
	r := rng.Float64() * sum
	for i, s := range scores {
		if s > 0 {
			if r < s {
				return i
			}
			r -= s
		}
	}
	// Rounding can leave r at or just above the last positive score.
	return last
}
