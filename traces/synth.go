package traces

import (
	"container/heap"
	"fmt"
	"io"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/stat/distuv"
)

// SynthConfig describes a synthetic workload.
type SynthConfig struct {
	// Requests is the number of rows, follow-up turns included.
	Requests int `json:"requests"`
	// Rate is new conversations (or requests, without sessions) per second.
	Rate float64 `json:"rate"`
	// Arrival is "poisson" (default) or "gamma"; CV is the gamma inter-arrival
	// coefficient of variation (burstiness: 1 is Poisson, above 1 burstier).
	Arrival string  `json:"arrival,omitempty"`
	CV      float64 `json:"cv,omitempty"`
	// InputMean and OutputMean are mean token counts, drawn lognormally with the given
	// sigmas (0: every request gets the mean), unless empirical samples are given.
	InputMean       float64 `json:"input_mean"`
	OutputMean      float64 `json:"output_mean"`
	InputSigma      float64 `json:"input_sigma"`
	OutputSigma     float64 `json:"output_sigma"`
	InputEmpirical  []int   `json:"-"`
	OutputEmpirical []int   `json:"-"`
	// PrefixGroups requests share one of this many prefixes of PrefixTokens tokens (a
	// system prompt, a few-shot template); a prompt shorter than the prefix shares part.
	PrefixGroups int `json:"prefix_groups,omitempty"`
	PrefixTokens int `json:"prefix_tokens,omitempty"`
	// TurnsMean above 1 makes conversations: follow-up turns (geometric count with this
	// mean) arrive ThinkTimeMean seconds (exponential) after the previous turn, with the
	// previous prompt and answer as their prefix.
	TurnsMean     float64 `json:"turns_mean,omitempty"`
	ThinkTimeMean float64 `json:"think_time_mean,omitempty"`
	// BlockSize is the tokens each generated hash id covers (default 16).
	BlockSize int `json:"block_size,omitempty"`
	// MinTokens and MaxTokens clamp drawn lengths (defaults 1 and 32768).
	MinTokens int    `json:"min_tokens,omitempty"`
	MaxTokens int    `json:"max_tokens,omitempty"`
	Seed      uint64 `json:"seed"`
}

func (c *SynthConfig) validate() error {
	switch {
	case c.Requests <= 0:
		return fmt.Errorf("synth: requests must be positive, got %d", c.Requests)
	case !(c.Rate > 0) || math.IsInf(c.Rate, 0):
		return fmt.Errorf("synth: rate must be positive, got %g", c.Rate)
	case c.Arrival != "" && c.Arrival != "poisson" && c.Arrival != "gamma":
		return fmt.Errorf("synth: arrival %q: want poisson or gamma", c.Arrival)
	case c.Arrival == "gamma" && !(c.CV > 0):
		return fmt.Errorf("synth: gamma arrivals need a positive cv, got %g", c.CV)
	case len(c.InputEmpirical) == 0 && !(c.InputMean >= 1):
		return fmt.Errorf("synth: input mean must be at least 1, got %g", c.InputMean)
	case len(c.OutputEmpirical) == 0 && !(c.OutputMean >= 1):
		return fmt.Errorf("synth: output mean must be at least 1, got %g", c.OutputMean)
	case c.InputSigma < 0 || c.OutputSigma < 0:
		return fmt.Errorf("synth: sigmas must not be negative")
	case c.PrefixGroups < 0 || c.PrefixTokens < 0:
		return fmt.Errorf("synth: prefix groups and tokens must not be negative")
	case c.TurnsMean != 0 && c.TurnsMean < 1:
		return fmt.Errorf("synth: turns mean must be at least 1, got %g", c.TurnsMean)
	case c.BlockSize < 0 || c.MinTokens < 0 || c.MaxTokens < 0:
		return fmt.Errorf("synth: block size and token bounds must not be negative")
	}
	return nil
}

// NewSynth returns a generator of rows in arrival order, the same for the same config.
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
		cfg.MaxTokens = 32768
	}
	if cfg.PrefixGroups > 0 && cfg.PrefixTokens == 0 {
		cfg.PrefixTokens = 512
	}
	if cfg.ThinkTimeMean == 0 {
		cfg.ThinkTimeMean = 30
	}
	src := rand.NewPCG(cfg.Seed, 0x5eed)
	s := &synth{cfg: cfg, rng: rand.New(src), nextID: 1 << 40}
	if cfg.Arrival == "gamma" {
		shape := 1 / (cfg.CV * cfg.CV)
		s.gap = distuv.Gamma{Alpha: shape, Beta: shape * cfg.Rate, Src: src}
	} else {
		s.gap = distuv.Exponential{Rate: cfg.Rate, Src: src}
	}
	s.input = s.lengths(cfg.InputMean, cfg.InputSigma, cfg.InputEmpirical, src)
	s.output = s.lengths(cfg.OutputMean, cfg.OutputSigma, cfg.OutputEmpirical, src)
	s.nextArrival = s.gap.Rand()
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
	// A lognormal with the requested mean: mu = ln(mean) - sigma^2/2.
	return distuv.LogNormal{Mu: math.Log(mean) - sigma*sigma/2, Sigma: sigma, Src: src}
}

type synth struct {
	cfg           SynthConfig
	rng           *rand.Rand
	gap           sampler
	input, output sampler
	nextArrival   float64
	nextID        int64
	sessions      uint64
	emitted       int
	pending       turnQueue
}

// turn is a conversation's next request, waiting for its arrival time.
type turn struct {
	row  Row
	left int // turns after this one
	seq  uint64
}

type turnQueue []turn

func (q turnQueue) Len() int { return len(q) }
func (q turnQueue) Less(i, j int) bool {
	if q[i].row.Arrival != q[j].row.Arrival {
		return q[i].row.Arrival < q[j].row.Arrival
	}
	return q[i].seq < q[j].seq
}
func (q turnQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *turnQueue) Push(x any)   { *q = append(*q, x.(turn)) }
func (q *turnQueue) Pop() any {
	old := *q
	t := old[len(old)-1]
	*q = old[:len(old)-1]
	return t
}

func (s *synth) draw(sm sampler) int {
	v := int(math.Round(sm.Rand()))
	return min(max(v, s.cfg.MinTokens), s.cfg.MaxTokens)
}

// freshIDs appends ids unique to this request for n blocks.
func (s *synth) freshIDs(ids []int64, n int) []int64 {
	for range n {
		ids = append(ids, s.nextID)
		s.nextID++
	}
	return ids
}

func (s *synth) blocks(tokens int) int { return (tokens + s.cfg.BlockSize - 1) / s.cfg.BlockSize }

// newConversation draws the first request of a conversation (or a lone request).
func (s *synth) newConversation(at float64) turn {
	in, out := s.draw(s.input), s.draw(s.output)
	var ids []int64
	if g := s.cfg.PrefixGroups; g > 0 {
		group := int64(s.rng.IntN(g))
		shared := min(s.cfg.PrefixTokens, in) / s.cfg.BlockSize
		for i := range shared {
			ids = append(ids, group<<32|int64(i))
		}
	}
	ids = s.freshIDs(ids, s.blocks(in)-len(ids))
	t := turn{row: Row{Arrival: at, InputTokens: in, OutputTokens: out, HashIDs: ids, HashBlockSize: s.cfg.BlockSize}}
	if s.cfg.TurnsMean > 1 {
		s.sessions++
		t.row.Session = s.sessions
		// Geometric number of further turns with mean TurnsMean-1.
		p := 1 / s.cfg.TurnsMean
		for s.rng.Float64() > p {
			t.left++
		}
	}
	return t
}

// followUp is the turn after prev: its prompt is prev's prompt and answer plus new text.
func (s *synth) followUp(prev turn) turn {
	user, out := s.draw(s.input), s.draw(s.output)
	in := min(prev.row.InputTokens+prev.row.OutputTokens+user, s.cfg.MaxTokens)
	keep := min(prev.row.InputTokens/s.cfg.BlockSize, s.blocks(in))
	ids := append(make([]int64, 0, s.blocks(in)), prev.row.HashIDs[:keep]...)
	ids = s.freshIDs(ids, s.blocks(in)-len(ids))
	think := s.rng.ExpFloat64() * s.cfg.ThinkTimeMean
	return turn{
		row:  Row{Arrival: prev.row.Arrival + think, InputTokens: in, OutputTokens: out, HashIDs: ids, HashBlockSize: s.cfg.BlockSize, Session: prev.row.Session},
		left: prev.left - 1,
	}
}

func (s *synth) Next() (Row, error) {
	if s.emitted >= s.cfg.Requests {
		return Row{}, io.EOF
	}
	var t turn
	if len(s.pending) > 0 && s.pending[0].row.Arrival <= s.nextArrival {
		t = heap.Pop(&s.pending).(turn)
	} else {
		t = s.newConversation(s.nextArrival)
		s.nextArrival += s.gap.Rand()
	}
	if t.left > 0 {
		next := s.followUp(t)
		next.seq = uint64(s.emitted)
		heap.Push(&s.pending, next)
	}
	s.emitted++
	t.row.Line = s.emitted
	return t.row, nil
}
