package core

import (
	"slices"

	"servelab/serving"
)

// planner is the view of an Instance that a batch policy plans through.
type planner Instance

func (p *planner) Waiting() []*serving.Seq { return p.waiting.items() }

func (p *planner) Running() []*serving.Seq { return p.running }

// cachedBlocks is how many leading prompt blocks of a fresh sequence the cache holds,
// short of its last token: vLLM always recomputes the last prompt token so the step
// produces logits to sample from.
func (p *planner) cachedBlocks(s *serving.Seq) int {
	if !p.cache || s.NumComputed > 0 || len(s.Req.BlockHashes) == 0 {
		return 0
	}
	if p.lookupSeq == s {
		return p.lookupBlocks
	}
	bs := p.kv.BlockSize()
	n := min(p.kv.CachedPrefixBlocks(s.Req.BlockHashes), (s.NumTokens()-1)/bs)
	p.lookupSeq, p.lookupBlocks = s, n
	return n
}

func (p *planner) CachedTokens(s *serving.Seq) int {
	return p.cachedBlocks(s) * p.kv.BlockSize()
}

func (p *planner) Allocate(s *serving.Seq, numTokens int) bool {
	if s.Status == serving.SeqRunning {
		return p.kv.Allocate(s, numTokens, 0)
	}
	cached := p.cachedBlocks(s)
	// The memo answers only the lookup just made: by the next step other sequences'
	// allocations may have evicted those blocks.
	p.lookupSeq = nil
	if !p.kv.Allocate(s, numTokens, cached) {
		return false
	}
	if s.NumComputed == 0 {
		hit := cached * p.kv.BlockSize()
		if p.cache {
			p.stats.PrefixCacheQueries += int64(s.NumTokens())
			p.stats.PrefixCacheHits += int64(hit)
		}
		s.NumComputed = hit
		if s.FirstScheduled < 0 {
			s.NumCachedPrompt = hit
		}
	}
	return true
}

func (p *planner) Schedule(s *serving.Seq, numTokens int) {
	if s.Status == serving.SeqWaiting {
		i := 0
		if w := p.waiting.items(); len(w) == 0 || w[0] != s {
			i = p.waiting.index(s)
		}
		p.waiting.remove(i)
		s.Status = serving.SeqRunning
		p.running = append(p.running, s)
	}
	if s.FirstScheduled < 0 {
		s.FirstScheduled = p.now
	}
	p.step.Add(s, numTokens)
}

func (p *planner) Preempt(s *serving.Seq) (withdrawn int) {
	if i := slices.IndexFunc(p.step.Seqs, func(sc serving.Scheduled) bool { return sc.Seq == s }); i >= 0 {
		withdrawn = p.step.Seqs[i].NumTokens
		p.step.Seqs = slices.Delete(p.step.Seqs, i, i+1)
		p.step.Shape = serving.StepShape{}
		seqs := p.step.Seqs
		p.step.Seqs = seqs[:0]
		for _, sc := range seqs {
			p.step.Add(sc.Seq, sc.NumTokens)
		}
	}
	if i := slices.Index(p.running, s); i >= 0 {
		p.running = slices.Delete(p.running, i, i+1)
	}
	p.kv.Free(s)
	s.NumComputed = 0
	s.Preemptions++
	s.Status = serving.SeqWaiting
	p.stats.Preemptions++
	p.waiting.pushFront(s)
	p.step.Preempted = append(p.step.Preempted, s)
	return withdrawn
}
