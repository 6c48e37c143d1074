package route

// InstanceRemover is a policy that keeps state per instance (a prefix index) and can drop
// an instance's when it leaves the cluster: the real router calls RemoveInstance when an
// endpoint is removed (a pod deleted or no longer ready), before it gives the endpoint's
// InstanceView.Index to another. Without it, the next endpoint at that index would inherit
// prefixes the old one held, and an index churned by rolling updates would keep its
// entries forever. GIE's prefix-cache-scorer drops a pod's entries the same way
// (indexer.RemovePod, pkg/epp/scheduling/framework/plugins/multi/prefix/indexer.go).
type InstanceRemover interface {
	RemoveInstance(instance int)
}

// RemoveInstance drops every entry recorded against the instance; a later Record starts
// its LRU afresh.
func (x *PrefixIndex) RemoveInstance(instance int) {
	if instance < 0 || instance >= len(x.lrus) {
		return
	}
	x.lrus[instance] = blockLRU{head: -1}
	for len(x.lrus) > 0 && x.lrus[len(x.lrus)-1].head < 0 {
		x.lrus = x.lrus[:len(x.lrus)-1]
	}
}

// RemoveInstance implements InstanceRemover.
func (p *PrefixAffinity) RemoveInstance(instance int) { p.index.RemoveInstance(instance) }

// RemoveInstance implements InstanceRemover: it clears the prefix-cache-scorer's index.
func (p *Weighted) RemoveInstance(instance int) {
	for _, s := range p.scorers {
		if s, ok := s.scorer.(*prefixCacheScorer); ok {
			s.index.RemoveInstance(instance)
		}
	}
}
