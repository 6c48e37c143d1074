package traces

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"gonum.org/v1/gonum/stat/distuv"

	"servelab/internal/minheap"
)

// SynthConfig describes a synthetic workload.
type SynthConfig struct {
	// Requests is the number of rows, follow-up turns included.
	Requests int `json:"requests"`
	// Rate is requests per second, follow-up turns included: with sessions, conversations
	// start at Rate/TurnsMean per second, so the rate is reached once follow-ups have
	// caught up, after a few think times.
	Rate float64 `json:"rate"`
	// Arrival is "poisson" (default) or "gamma"; CV is the gamma inter-arrival
	// coefficient of variation (shape 1/CV²: 1 is Poisson, above 1 burstier).
	Arrival string  `json:"arrival,omitempty"`
	CV      float64 `json:"cv,omitempty"`
	// RateCurve, when set, makes the rate vary over time: Rate times the curve's
	// multiplier (see RateCurve: "sine:period=600" is day-shaped, "steps:0=1,60=3" a step).
	RateCurve string `json:"rate_curve,omitempty"`
	// InputMean and OutputMean are mean token counts, drawn lognormally with the given
	// sigmas (0: every request gets the mean), unless empirical samples are given, which
	// are then drawn from uniformly (e.g. a trace's lengths).
	InputMean       float64 `json:"input_mean,omitempty"`
	OutputMean      float64 `json:"output_mean,omitempty"`
	InputSigma      float64 `json:"input_sigma,omitempty"`
	OutputSigma     float64 `json:"output_sigma,omitempty"`
	InputEmpirical  []int   `json:"-"`
	OutputEmpirical []int   `json:"-"`
	// PrefixGroups makes each conversation start with one of this many shared prefixes
	// of PrefixTokens tokens (a system prompt, a few-shot template; default 512), chosen
	// uniformly; a prompt shorter than the prefix shares the part it has.
	PrefixGroups int `json:"prefix_groups,omitempty"`
	PrefixTokens int `json:"prefix_tokens,omitempty"`
	// TurnsMean above 1 makes conversations with a geometric number of turns of this
	// mean. A follow-up turn arrives an exponential think time (mean ThinkTimeMean s,
	// default 30) after the turn before it, and its prompt is that turn's prompt, its
	// answer and a new user message drawn like a first prompt.
	TurnsMean     float64 `json:"turns_mean,omitempty"`
	ThinkTimeMean float64 `json:"think_time_mean,omitempty"`
	// BlockSize is the tokens each generated hash id covers (default 16).
	BlockSize int `json:"block_size,omitempty"`
	// MinTokens and MaxTokens clamp drawn lengths and follow-up prompts (defaults 1 and
	// 32768).
	MinTokens int    `json:"min_tokens,omitempty"`
	MaxTokens int    `json:"max_tokens,omitempty"`
	Seed      uint64 `json:"seed"`
	// Classes, if set, give each conversation an objective (a class: the row's
	// objective column) drawn by share, and a fairness id among the class's tenants. A
	// class's rate is its share of Rate (a Poisson stream thinned by share is a Poisson
	// stream of that rate). The draw has its own random stream: the same config without
	// classes gives the same rows as before.
	Classes []SynthClass `json:"classes,omitempty"`
}

// SynthClass is one request class of a synthetic workload.
type SynthClass struct {
	// Name is the class's InferenceObjective name (the objective column).
	Name string `json:"name"`
	// Share is the fraction of conversations in the class; shares must add up to 1.
	Share float64 `json:"share"`
	// Tenants, if above 1, spreads the class over this many flows, fairness ids
	// NAME-0 to NAME-(Tenants-1), drawn uniformly; else its rows have fairness id NAME.
	Tenants int `json:"tenants,omitempty"`
}

// ParseSynthClass reads "NAME:SHARE[:tenants=N]", e.g. "critical:0.7" or
// "sheddable:0.3:tenants=4".
func ParseSynthClass(s string) (SynthClass, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" {
		return SynthClass{}, fmt.Errorf("class %q: want NAME:SHARE[:tenants=N], e.g. critical:0.7", s)
	}
	c := SynthClass{Name: parts[0]}
	var err error
	if c.Share, err = strconv.ParseFloat(parts[1], 64); err != nil || !(c.Share > 0 && c.Share <= 1) {
		return SynthClass{}, fmt.Errorf("class %q: share %q is not a number in (0, 1]", s, parts[1])
	}
	if len(parts) == 3 {
		v, ok := strings.CutPrefix(parts[2], "tenants=")
		if c.Tenants, err = strconv.Atoi(v); !ok || err != nil || c.Tenants < 1 {
			return SynthClass{}, fmt.Errorf("class %q: %q: want tenants=N with N at least 1", s, parts[2])
		}
	}
	return c, nil
}

func (c *SynthConfig) validate() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case c.Requests <= 0:
		return fmt.Errorf("synth: requests must be positive, got %d", c.Requests)
	case !(c.Rate > 0) || !finite(c.Rate):
		return fmt.Errorf("synth: rate must be positive, got %g", c.Rate)
	case c.Arrival != "" && c.Arrival != "poisson" && c.Arrival != "gamma":
		return fmt.Errorf("synth: arrival %q: want poisson or gamma", c.Arrival)
	case c.Arrival == "gamma" && !(c.CV > 0 && finite(c.CV)):
		return fmt.Errorf("synth: gamma arrivals need a positive cv, got %g", c.CV)
	case len(c.InputEmpirical) == 0 && !(c.InputMean >= 1 && finite(c.InputMean)):
		return fmt.Errorf("synth: input mean must be at least 1, got %g", c.InputMean)
	case len(c.OutputEmpirical) == 0 && !(c.OutputMean >= 1 && finite(c.OutputMean)):
		return fmt.Errorf("synth: output mean must be at least 1, got %g", c.OutputMean)
	case !(c.InputSigma >= 0 && c.InputSigma <= 10) || !(c.OutputSigma >= 0 && c.OutputSigma <= 10):
		return fmt.Errorf("synth: sigmas must be between 0 and 10, got %g and %g", c.InputSigma, c.OutputSigma)
	case c.PrefixGroups < 0 || c.PrefixGroups > math.MaxInt32 || c.PrefixTokens < 0:
		return fmt.Errorf("synth: prefix groups (%d) and tokens (%d) must not be negative", c.PrefixGroups, c.PrefixTokens)
	case c.TurnsMean != 0 && !(c.TurnsMean >= 1 && c.TurnsMean <= 1000):
		return fmt.Errorf("synth: turns mean must be between 1 and 1000, got %g", c.TurnsMean)
	case !(c.ThinkTimeMean >= 0) || !finite(c.ThinkTimeMean):
		return fmt.Errorf("synth: think time mean must not be negative, got %g", c.ThinkTimeMean)
	case c.BlockSize < 0 || c.MinTokens < 0 || c.MaxTokens < 0 || c.MaxTokens > maxCount:
		return fmt.Errorf("synth: block size and token bounds must be between 0 and %d", maxCount)
	case c.MaxTokens != 0 && c.MinTokens > c.MaxTokens:
		return fmt.Errorf("synth: min tokens %d above max tokens %d", c.MinTokens, c.MaxTokens)
	}
	if c.RateCurve != "" {
		if _, err := ParseRateCurve(c.RateCurve); err != nil {
			return fmt.Errorf("synth: rate_curve: %w", err)
		}
	}
	if len(c.Classes) > 0 {
		total := 0.0
		seen := map[string]bool{}
		for _, k := range c.Classes {
			switch {
			case k.Name == "":
				return fmt.Errorf("synth: a class has no name")
			case seen[k.Name]:
				return fmt.Errorf("synth: class %q given twice", k.Name)
			case !(k.Share > 0 && k.Share <= 1):
				return fmt.Errorf("synth: class %q: share must be in (0, 1], got %g", k.Name, k.Share)
			case k.Tenants < 0:
				return fmt.Errorf("synth: class %q: tenants must not be negative, got %d", k.Name, k.Tenants)
			}
			seen[k.Name] = true
			total += k.Share
		}
		if math.Abs(total-1) > 1e-9 {
			return fmt.Errorf("synth: class shares add up to %g, want 1", total)
		}
	}
	return nil
}

// NewSynth returns a generator of cfg.Requests rows in nondecreasing arrival order, the
// first at 0 s. The same config (seed included) gives the same rows.
//
// Rows carry hash ids of BlockSize tokens: a prefix group's requests share their leading
// ids, and a follow-up turn's prompt repeats the ids of the full blocks of the previous
// turn's prompt, then has fresh ids for the rest (the previous answer and the new
// message). Those fresh ids cover the answer's tokens too, so a later turn reuses them:
// they hit in a cache only if the engine kept the earlier turn's blocks, as in real
// multi-turn serving.
func NewSynth(cfg SynthConfig) (Reader, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 16
	}
	if cfg.MinTokens == 0 {
		cfg.MinTokens = 1
	}
	if cfg.MaxTokens == 0 {
		cfg.MaxTokens = max(32768, cfg.MinTokens)
	}
	if cfg.PrefixGroups > 0 && cfg.PrefixTokens == 0 {
		cfg.PrefixTokens = 512
	}
	if cfg.ThinkTimeMean == 0 {
		cfg.ThinkTimeMean = 30
	}
	src := rand.NewPCG(cfg.Seed, 0x5eed)
	s := &synth{cfg: cfg, rng: rand.New(src), nextID: 1}
	if cfg.RateCurve != "" {
		s.curve, _ = ParseRateCurve(cfg.RateCurve) // validate parsed it
	}
	conversations := cfg.Rate
	if cfg.TurnsMean > 1 {
		conversations /= cfg.TurnsMean
	}
	if cfg.Arrival == "gamma" {
		shape := 1 / (cfg.CV * cfg.CV)
		s.gap = distuv.Gamma{Alpha: shape, Beta: shape * conversations, Src: src}
	} else {
		s.gap = distuv.Exponential{Rate: conversations, Src: src}
	}
	s.input = s.lengths(cfg.InputMean, cfg.InputSigma, cfg.InputEmpirical, src)
	s.output = s.lengths(cfg.OutputMean, cfg.OutputSigma, cfg.OutputEmpirical, src)
	if len(cfg.Classes) > 0 {
		s.classRNG = rand.New(rand.NewPCG(cfg.Seed, 0xc1a55))
	}
	return s, nil
}

type sampler interface{ Rand() float64 }

type fixed float64

func (f fixed) Rand() float64 { return float64(f) }

type empirical struct {
	values []int
	rng    *rand.Rand
}

func (e empirical) Rand() float64 { return float64(e.values[e.rng.IntN(len(e.values))]) }

func (s *synth) lengths(mean, sigma float64, samples []int, src rand.Source) sampler {
	switch {
	case len(samples) > 0:
		return empirical{samples, s.rng}
	case sigma == 0:
		return fixed(mean)
	}
	// A lognormal with the requested mean: E = exp(mu + sigma²/2).
	return distuv.LogNormal{Mu: math.Log(mean) - sigma*sigma/2, Sigma: sigma, Src: src}
}

// Hash ids: fresh ones count up from 1; a prefix group's are groupIDs|group<<31|block,
// disjoint from them and from each other's (groups and blocks both stay below 2^31).
const groupIDs = 1 << 62

type synth struct {
	cfg           SynthConfig
	rng           *rand.Rand
	gap           sampler
	input, output sampler
	nextArrival   float64
	curve         *RateCurve
	nextID        int64
	sessions      uint64
	emitted       int
	pending       minheap.Heap[turn]
	slab          idSlab
	ids           []int64
	classRNG      *rand.Rand // draws classes and tenants, when there are classes
}

// class draws a conversation's objective and fairness id.
func (s *synth) class() (objective, fairness string) {
	u := s.classRNG.Float64()
	k := s.cfg.Classes[len(s.cfg.Classes)-1]
	for _, c := range s.cfg.Classes {
		if u < c.Share {
			k = c
			break
		}
		u -= c.Share
	}
	if k.Tenants > 1 {
		return k.Name, k.Name + "-" + strconv.Itoa(s.classRNG.IntN(k.Tenants))
	}
	return k.Name, k.Name
}

// turn is a conversation's next request, waiting for its arrival time.
type turn struct {
	row  Row
	left int    // turns after this one
	seq  uint64 // breaks ties in arrival time deterministically
}

func (s *synth) draw(sm sampler) int {
	v := sm.Rand()
	if !(v < float64(s.cfg.MaxTokens)) { // NaN and huge draws too
		return s.cfg.MaxTokens
	}
	return max(int(math.Round(v)), s.cfg.MinTokens)
}

// fresh appends ids unique to this request until the prompt's blocks are covered.
func (s *synth) fresh(tokens int) []int64 {
	for len(s.ids) < s.blocks(tokens) {
		s.ids = append(s.ids, s.nextID)
		s.nextID++
	}
	return s.slab.copy(s.ids)
}

func (s *synth) blocks(tokens int) int { return (tokens + s.cfg.BlockSize - 1) / s.cfg.BlockSize }

// newConversation draws the first request of a conversation (or a lone request).
func (s *synth) newConversation(at float64) turn {
	in, out := s.draw(s.input), s.draw(s.output)
	s.ids = s.ids[:0]
	if g := s.cfg.PrefixGroups; g > 0 {
		group := int64(s.rng.IntN(g))
		for i := range min(s.cfg.PrefixTokens, in) / s.cfg.BlockSize {
			s.ids = append(s.ids, groupIDs|group<<31|int64(i))
		}
	}
	t := turn{row: Row{Arrival: at, InputTokens: in, OutputTokens: out, HashIDs: s.fresh(in), HashBlockSize: s.cfg.BlockSize}}
	if s.classRNG != nil {
		t.row.Objective, t.row.FairnessID = s.class()
	}
	if s.cfg.TurnsMean > 1 {
		s.sessions++
		t.row.Session = s.sessions
		// Geometric number of further turns, mean TurnsMean-1.
		p := 1 / s.cfg.TurnsMean
		for s.rng.Float64() >= p {
			t.left++
		}
	}
	return t
}

// followUp is the turn after prev: its prompt is prev's prompt and answer plus new text.
func (s *synth) followUp(prev *turn) turn {
	user, out := s.draw(s.input), s.draw(s.output)
	in := min(prev.row.InputTokens+prev.row.OutputTokens+user, s.cfg.MaxTokens)
	keep := min(prev.row.InputTokens/s.cfg.BlockSize, s.blocks(in))
	s.ids = append(s.ids[:0], prev.row.HashIDs[:keep]...)
	think := s.rng.ExpFloat64() * s.cfg.ThinkTimeMean
	return turn{
		row: Row{
			Arrival: prev.row.Arrival + think, InputTokens: in, OutputTokens: out,
			HashIDs: s.fresh(in), HashBlockSize: s.cfg.BlockSize, Session: prev.row.Session,
			Objective: prev.row.Objective, FairnessID: prev.row.FairnessID,
		},
		left: prev.left - 1,
		seq:  uint64(s.emitted),
	}
}

func (s *synth) Next() (Row, error) {
	if s.emitted >= s.cfg.Requests {
		return Row{}, io.EOF
	}
	var t turn
	next := s.nextArrival
	if s.curve != nil {
		next = s.curve.Time(next) // nextArrival is in the curve's operational time
	}
	if len(s.pending) > 0 && s.pending[0].row.Arrival <= next {
		t = s.pending.Pop()
	} else {
		t = s.newConversation(next)
		s.nextArrival += s.gap.Rand()
	}
	if t.left > 0 {
		s.pending.Push(s.followUp(&t))
	}
	s.emitted++
	t.row.Line = s.emitted
	return t.row, nil
}

// Less orders waiting turns by arrival, then by when they were drawn.
func (t turn) Less(o turn) bool {
	if t.row.Arrival != o.row.Arrival {
		return t.row.Arrival < o.row.Arrival
	}
	return t.seq < o.seq
}
