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
	// DecodeFilter and PrefillFilter are the profiles' role filters (llm-d's decode-filter,
	// prefill-filter or a by-label filter on llm-d.ai/role); nil passes every endpoint. Pick
	// takes views already filtered: a real router filters its endpoints by their roles, the
	// simulator splits instances by their pools' roles.
	DecodeFilter, PrefillFilter *RoleFilter
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

// llm-d's endpoint roles: the pod label llm-d.ai/role and the values its role filters
// accept (llm-d-inference-scheduler pkg/epp/framework/plugins/scheduling/filter/bylabel/
// roles.go). RoleBoth is the deprecated spelling of RolePrefillDecode; both are accepted.
const (
	RoleLabel         = "llm-d.ai/role"
	RolePrefill       = "prefill"
	RoleDecode        = "decode"
	RolePrefillDecode = "prefill-decode"
	RoleBoth          = "both"
)

// Roles are the role values an endpoint may carry (besides none).
var Roles = []string{RolePrefill, RoleDecode, RoleBoth, RolePrefillDecode}

// Filter plugin types of llm-d that select endpoints by role.
const (
	PrefillFilterType = "prefill-filter"
	DecodeFilterType  = "decode-filter"
	ByLabelFilterType = "by-label"
)

// RoleFilter is llm-d's by-label filter on llm-d.ai/role: an endpoint passes when its role
// is one of Values, or when it has no role and AllowsNoLabel is set.
type RoleFilter struct {
	Name          string
	Values        []string
	AllowsNoLabel bool
}

// DecodeRoleFilter is llm-d's decode-filter: decode, prefill-decode and both endpoints,
// and endpoints without a role.
func DecodeRoleFilter() *RoleFilter {
	return &RoleFilter{Name: DecodeFilterType, Values: []string{RoleDecode, RolePrefillDecode, RoleBoth}, AllowsNoLabel: true}
}

// PrefillRoleFilter is llm-d's prefill-filter: prefill, prefill-decode and both endpoints;
// an endpoint without a role is never a prefill endpoint.
func PrefillRoleFilter() *RoleFilter {
	return &RoleFilter{Name: PrefillFilterType, Values: []string{RolePrefill, RolePrefillDecode, RoleBoth}}
}

// Allows reports whether an endpoint of role passes ("" is an endpoint without the
// label). A nil filter passes every endpoint, as a profile without filters does.
func (f *RoleFilter) Allows(role string) bool {
	if f == nil {
		return true
	}
	if role == "" {
		return f.AllowsNoLabel
	}
	for _, v := range f.Values {
		if v == role {
			return true
		}
	}
	return false
}

// Route implements Policy with the decode profile alone (over views the caller already
// filtered), so a P/D configuration still routes where only one endpoint is chosen: a
// cluster without prefill endpoints, an ext_proc pick.
func (h *PDProfileHandler) Route(req *serving.Request, views []serving.InstanceView) int {
	return h.Decode.Route(req, views)
}

// RemoveInstance implements InstanceRemover for both profiles.
func (h *PDProfileHandler) RemoveInstance(instance int) {
	for _, p := range []Policy{h.Decode, h.Prefill} {
		if rm, ok := p.(InstanceRemover); ok {
			rm.RemoveInstance(instance)
		}
	}
}

// String describes the handler: its profiles and decider.
func (h *PDProfileHandler) String() string {
	return fmt.Sprintf("%s[decode %v; prefill %v; %s nonCachedTokens=%d]", PDProfileHandlerType, h.Decode, h.Prefill, PrefixBasedPDDeciderType, h.Decider.NonCachedTokens)
}
