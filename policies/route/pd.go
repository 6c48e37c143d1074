package route

import (
	"fmt"

	"servelab/serving"
)

// Prefill/decode disaggregation as llm-d decides it. llm-d's pd-profile-handler
// (llm-d/llm-d-inference-scheduler, pkg/plugins/profile/pd_profile_handler.go) runs the
// decode scheduling profile first, asks its decider whether the request needs a remote
// prefill, and only then runs the prefill profile; each profile has its own scorers. The
// default decider is the prefix-based-pd-decider (pkg/plugins/profile/
// prefix_based_pd_decider.go): it reads how much of the prompt the chosen decode endpoint
// already caches (the prefix-cache scorer's match blocks x block size) and disaggregates
// only when the uncached rest is at least nonCachedTokens.

// PDProfileHandlerType and PrefixBasedPDDeciderType are llm-d's plugin type names.
const (
	PDProfileHandlerType     = "pd-profile-handler"
	PrefixBasedPDDeciderType = "prefix-based-pd-decider"
	// DefaultNonCachedTokens is servelab's default for nonCachedTokens. (llm-d's factory
	// default is 0, which disaggregates every request; its guides configure 16.)
	DefaultNonCachedTokens = 16
)

// PrefixBasedPDDecider is llm-d's prefix-based-pd-decider.
type PrefixBasedPDDecider struct {
	// NonCachedTokens is llm-d's nonCachedTokens parameter: the fewest uncached prompt
	// tokens on the decode endpoint that send a request to a prefill endpoint. 0 (or less)
	// disaggregates every request, as in llm-d.
	NonCachedTokens int
}

// Validate rejects a negative threshold, as llm-d does.
func (d PrefixBasedPDDecider) Validate() error {
	if d.NonCachedTokens < 0 {
		return fmt.Errorf("nonCachedTokens: must be 0 or positive, got %d", d.NonCachedTokens)
	}
	return nil
}

// Disaggregate reports whether req, routed to the decode endpoint decode, should have its
// prefill run on a prefill endpoint: the same comparisons as llm-d's decide. The cached
// part is decode.Cache's leading cached blocks times blockSize (0 when the view has no
// cache); a view without one counts as nothing cached.
func (d PrefixBasedPDDecider) Disaggregate(req *serving.Request, decode serving.InstanceView, blockSize int) bool {
	if d.NonCachedTokens <= 0 {
		return true
	}
	if req.PromptTokens < d.NonCachedTokens {
		return false
	}
	hit := 0
	if decode.Cache != nil && len(req.BlockHashes) > 0 {
		hit = decode.Cache.CachedPrefixBlocks(req.BlockHashes) * blockSize
	}
	return req.PromptTokens-hit >= d.NonCachedTokens
}

// PDProfileHandler is llm-d's pd-profile-handler: a decode profile (a routing policy over
// the decode endpoints), a prefill profile (one over the prefill endpoints) and the decider
// between them. The simulator and a real router use the same object.
type PDProfileHandler struct {
	Decode, Prefill Policy
	Decider         PrefixBasedPDDecider
	// BlockSize is the engines' KV block size, which turns cached blocks into tokens.
	BlockSize int
}

// Pick returns the position in decodeViews of the decode endpoint and, when the decider
// disaggregates, the position in prefillViews of the prefill endpoint (-1: the decode
// endpoint runs the whole request). With no prefill endpoints nothing is disaggregated.
func (h *PDProfileHandler) Pick(req *serving.Request, decodeViews, prefillViews []serving.InstanceView) (decode, prefill int) {
	decode = h.Decode.Route(req, decodeViews)
	if len(prefillViews) == 0 || decode < 0 || decode >= len(decodeViews) {
		return decode, -1
	}
	if !h.Decider.Disaggregate(req, decodeViews[decode], h.BlockSize) {
		return decode, -1
	}
	return decode, h.Prefill.Route(req, prefillViews)
}
