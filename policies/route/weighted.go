package route

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"servelab/policies"
	"servelab/serving"
)

// Picker type names, as GIE's EndpointPickerConfig spells them.
const (
	MaxScorePickerType       = "max-score-picker"
	RandomPickerType         = "random-picker"
	WeightedRandomPickerType = "weighted-random-picker"
)

// pickerTypes are the pickers the weighted policy supports, all picking one endpoint.
var pickerTypes = []string{MaxScorePickerType, RandomPickerType, WeightedRandomPickerType}

// weightedScorer is a scorer in a scheduling profile with its weight.
type weightedScorer struct {
	typ    string // scorer type, for ordering
	name   string // plugin name, for ordering
	scorer scorer
	weight float64
}

// Weighted is llm-d's (GIE's) scheduling profile without filters: every scorer gives each
// endpoint a score in [0, 1] (clamped, as GIE enforces), the endpoint's total is the sum
// of weight x score, and the picker chooses from the totals (GIE's runScorerPlugins and
// enforceScoreRange, pkg/epp/scheduling/framework/scheduler_profile.go @0901896a9583). After the pick, scorers that
// track routing (the prefix-cache-scorer) record the request against the chosen endpoint.
type Weighted struct {
	scorers []weightedScorer
	picker  string
	rng     *rand.Rand
	// scratch, one element per view
	scores, total []float64
}

// newWeighted builds a weighted policy; scorers are sorted into scorerTypes order (then by
// name) so the sum does not depend on the order a configuration listed them in.
func newWeighted(scorers []weightedScorer, picker string, env policies.Env) *Weighted {
	rank := func(t string) int {
		for i, s := range scorerTypes {
			if s == t {
				return i
			}
		}
		return len(scorerTypes)
	}
	sorted := append([]weightedScorer(nil), scorers...)
	// Insertion sort: a handful of scorers, and stability without a comparator closure.
	for i := 1; i < len(sorted); i++ {
		for j := i; j > 0; j-- {
			a, b := sorted[j-1], sorted[j]
			if rank(a.typ) < rank(b.typ) || rank(a.typ) == rank(b.typ) && a.name <= b.name {
				break
			}
			sorted[j-1], sorted[j] = b, a
		}
	}
	return &Weighted{scorers: sorted, picker: picker, rng: newRand(env.Seed, "weighted")}
}

// Route implements Policy.
func (w *Weighted) Route(req *serving.Request, views []serving.InstanceView) int {
	n := len(views)
	if n == 0 {
		return -1
	}
	if cap(w.total) < n {
		w.scores, w.total = make([]float64, n), make([]float64, n)
	}
	scores, total := w.scores[:n], w.total[:n]
	clear(total)
	for _, s := range w.scorers {
		s.scorer.score(req, views, scores)
		for i, v := range scores {
			total[i] += s.weight * clamp01(v)
		}
	}
	var pick int
	switch w.picker {
	case RandomPickerType:
		pick = w.rng.IntN(n)
	case WeightedRandomPickerType:
		pick = weightedDraw(total, w.rng)
	default:
		pick = maxScore(total, w.rng)
	}
	for _, s := range w.scorers {
		s.scorer.picked(req, &views[pick])
	}
	return pick
}

// Default weights of llm-d's default scheduling profile (its "well-lit path"):
// prefix-cache-scorer 3, queue-scorer 2, kv-cache-utilization-scorer 2.
const (
	defaultPrefixWeight = 3
	defaultQueueWeight  = 2
	defaultKVWeight     = 2
)

// weightKeys maps the weighted policy's short weight parameters to scorer types.
var weightKeys = []struct {
	key, typ string
	def      float64
}{
	{"prefix", PrefixCacheScorerType, defaultPrefixWeight},
	{"queue", QueueScorerType, defaultQueueWeight},
	{"kv", KVCacheUtilizationScorerType, defaultKVWeight},
	{"load", LoadAwareScorerType, 0},
	{"active", ActiveRequestScorerType, 0},
	{"precise-prefix", PrecisePrefixCacheScorerType, 0},
	{"predicted-latency", PredictedLatencyScorerType, 0},
}

func init() {
	params := make([]policies.Param, 0, len(weightKeys)+len(prefixIndexParams)+2)
	for _, k := range weightKeys {
		params = append(params, policies.Param{Name: k.key, Default: strconv.FormatFloat(k.def, 'g', -1, 64),
			Doc: "weight of " + k.typ + " (0 leaves it out)"})
	}
	params = append(params, prefixIndexParams...)
	params = append(params, predictedLatencyParams...)
	params = append(params,
		policies.Param{Name: "load_threshold", Default: strconv.Itoa(DefaultLoadAwareThreshold),
			Doc: "waiting requests at which load-aware-scorer reaches 0 (llm-d threshold)"},
		policies.Param{Name: "picker", Default: MaxScorePickerType,
			Doc: "how the totals choose: " + strings.Join(pickerTypes, ", ")},
	)
	Registry.Register(policies.Entry[Policy]{
		Name: "weighted",
		Doc: "llm-d scheduler: max of sum(weight x score) over llm-d's scorers, ties drawn from the seeded source " +
			"(also an EndpointPickerConfig YAML file)",
		Params: params,
		New:    newWeightedFromParams,
	})
}

func newWeightedFromParams(p *policies.Params, env policies.Env) (Policy, error) {
	// Scorer parameters are read even when their scorer is left out, so a spec that sets
	// them is not rejected as unknown and a malformed value is still reported.
	index := prefixIndexFromParams(p)
	threshold := loadThresholdParam(p)
	latencyCfg := predictedLatencyFromParams(p, env)
	var scorers []weightedScorer
	for _, k := range weightKeys {
		wt := p.Float(k.key, k.def)
		p.Check(wt >= 0 && !math.IsInf(wt, 0), k.key, "a non-negative finite weight")
		if !(wt > 0) || math.IsInf(wt, 0) {
			continue
		}
		s := weightedScorer{typ: k.typ, name: k.typ, weight: wt}
		switch k.typ {
		case PrefixCacheScorerType:
			s.scorer = &prefixCacheScorer{index: index}
		case QueueScorerType:
			s.scorer = queueScorer{}
		case KVCacheUtilizationScorerType:
			s.scorer = kvCacheUtilizationScorer{}
		case LoadAwareScorerType:
			s.scorer = &loadAwareScorer{threshold: float64(threshold)}
		case ActiveRequestScorerType:
			s.scorer = activeRequestScorer{}
		case PrecisePrefixCacheScorerType:
			s.scorer = precisePrefixCacheScorer{}
		case PredictedLatencyScorerType:
			s.scorer = newPredictedLatencyScorer(latencyCfg, env)
		}
		scorers = append(scorers, s)
	}
	picker := p.String("picker", MaxScorePickerType)
	p.Check(isOneOf(picker, pickerTypes), "picker", "one of "+strings.Join(pickerTypes, ", "))
	return newWeighted(scorers, picker, env), nil
}

// clamp01 enforces GIE's score range; a NaN (say from a bad metrics scrape) scores 0
// rather than poisoning the comparison of totals.
func clamp01(v float64) float64 {
	if v > 0 {
		return min(v, 1)
	}
	return 0
}

func loadThresholdParam(p *policies.Params) int {
	t := p.Int("load_threshold", DefaultLoadAwareThreshold)
	p.Check(t > 0, "load_threshold", "a positive integer")
	return max(t, 1)
}

func isOneOf(s string, set []string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

// String describes the profile, scorers in summing order.
func (w *Weighted) String() string {
	var b strings.Builder
	b.WriteString("weighted[")
	for i, s := range w.scorers {
		if i > 0 {
			b.WriteString(" + ")
		}
		fmt.Fprintf(&b, "%g*%s", s.weight, s.name)
	}
	b.WriteString("; " + w.picker + "]")
	return b.String()
}
