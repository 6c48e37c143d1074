package sim

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"servelab/policies/route"
	"servelab/serving"
)

// Prefill/decode disaggregation in the simulator, modelled on vLLM's P/D with the
// NixlConnector behind llm-d's router:
//
//   - The router picks a decode instance with the decode profile (Config.Router), asks the
//     prefix-based-pd-decider (route.PDProfileHandler) and, when it says so, picks a prefill
//     instance with the prefill profile (Disagg.PrefillRouter).
//   - The prefill instance runs the prompt with max_tokens 1 (vLLM's do_remote_decode):
//     prefill plus the first token, which the client never sees (llm-d's sidecar and vLLM's
//     proxy keep only the response's kv_transfer_params).
//   - The prompt's KV blocks (every block the prompt fills, the partial last one included)
//     then cross Disagg.Link: latency plus bytes / bandwidth, bytes = blocks x block size x
//     Disagg.KVBytesPerToken. The prefill instance keeps the blocks until the transfer ends,
//     then frees them (vLLM frees them once the decode side has read them).
//   - On arrival the decode instance queues the request with the whole prompt computed but
//     its last token, as vLLM's scheduler does for a request whose remote KV has landed
//     (vllm/v1/core/sched/scheduler.py, _update_waiting_for_remote_kv: computed tokens are
//     the received blocks' tokens, less one when they cover the whole prompt, so the last
//     prompt token is recomputed for logits to sample from). Its blocks are allocated when
//     the batch policy admits it, so with no free blocks it waits as any arrival does (vLLM
//     allocates them before pulling; here the decode side takes them on landing). Its first
//     step emits the first token the client sees; it then decodes.
//
// TTFT is therefore arrival -> prefill (queueing and compute) -> transfer -> the decode
// instance's first step: the first token the client receives comes from the decode
// instance, as in vLLM and llm-d. The record's Instance is the decode instance; Scheduled
// is when the prefill began, CachedTokens the prefill instance's prefix hit.

// Link is the interconnect KV blocks cross from a prefill to a decode instance.
type Link struct {
	Name string
	// BandwidthGBps is one direction's bandwidth in GB/s (1e9 bytes) and LatencyUs the
	// fixed cost of one transfer in microseconds.
	BandwidthGBps, LatencyUs float64
}

// LinkPresets are default links, from vendors' nominal per-GPU figures (each tensor-parallel
// rank moves its own KV shard over its own link, in parallel):
//
//   - nvlink: NVLink 4 as on H100 SXM, 900 GB/s bidirectional = 450 GB/s one way; 2 us.
//   - rdma: one 400 Gb/s InfiniBand NDR / RoCE NIC per GPU (ConnectX-7), 50 GB/s; 5 us
//     (a few us of wire and NIC latency plus the transfer library's setup).
//   - tcp: 100 Gb/s Ethernet through the kernel's TCP stack, taken at 10 GB/s; 50 us.
//
// They are defaults, not measurements; an experiment that depends on them should sweep them.
// One is measured:
//
//   - local: this development machine's real path (servelab engine --role decode pulling
//     over loopback HTTP, POST /v1/kv_transfer/pull, and writing the blocks into its cache),
//     so `servelab fidelity` compares a disaggregated CPU cluster with the same costs:
//     400 us a pull (the tiny model's one-block pull took 0.36 ms, an 8-block one 0.51 ms)
//     and 1.6 GB/s (the 110m model's 63-block, 72.6 MB pull took 44 ms: 1.65 GB/s),
//     scripts/pd-transfer; a loaded machine takes 2-4x longer.
var LinkPresets = map[string]Link{
	"nvlink": {Name: "nvlink", BandwidthGBps: 450, LatencyUs: 2},
	"rdma":   {Name: "rdma", BandwidthGBps: 50, LatencyUs: 5},
	"tcp":    {Name: "tcp", BandwidthGBps: 10, LatencyUs: 50},
	"local":  {Name: "local", BandwidthGBps: 1.6, LatencyUs: 400},
}

// DefaultLink is the preset a disaggregated cluster uses unless told otherwise.
const DefaultLink = "rdma"

// LookupLink returns the preset named name.
func LookupLink(name string) (Link, error) {
	l, ok := LinkPresets[strings.ToLower(name)]
	if !ok {
		names := make([]string, 0, len(LinkPresets))
		for n := range LinkPresets {
			names = append(names, n)
		}
		sort.Strings(names)
		return Link{}, fmt.Errorf("unknown KV link %q (want one of %s)", name, strings.Join(names, ", "))
	}
	return l, nil
}

// Time is how long bytes take over the link, in seconds.
func (l Link) Time(bytes float64) float64 {
	return l.LatencyUs*1e-6 + bytes/(l.BandwidthGBps*1e9)
}

// Disagg configures prefill/decode disaggregation (Config.Disagg).
type Disagg struct {
	// PrefillRouter picks among the prefill instances (llm-d's prefill profile);
	// Config.Router picks among the decode instances (the decode profile).
	PrefillRouter route.Policy
	Decider       route.PrefixBasedPDDecider
	Link          Link
	// KVBytesPerToken is the KV one prompt token takes on one link (one GPU's shard).
	KVBytesPerToken float64
}

// pdReq is one disaggregated request in flight.
type pdReq struct {
	req, half       *serving.Request // the client's request, and its max_tokens-1 prefill half
	prefill, decode int
	pre, holder     *serving.Seq // the prefill half's sequence; the blocks held while sending
	sent, transfer  float64
}

// pdState is the simulation's disaggregation state.
type pdState struct {
	cfg             Disagg
	handler         route.PDProfileHandler
	decodeIdx       []int // instances the decode profile picks among (roles decode and both)
	prefillIdx      []int
	dviews, pviews  []serving.InstanceView
	inflight        map[*serving.Request]*pdReq // by both halves' requests
	count           int64
	transferSeconds float64
	// cross holds the times of the queued events that may put a request on another
	// instance: prefill instances' step ends and transfer landings.
	cross timeHeap
	// tables holds, while a prefill instance's step completes, the block tables its
	// sequences had before the engine core freed the finished ones (sendKV's hints).
	tables [][]int32
}

func (s *simulation) initDisagg(roles []string) error {
	d := s.cfg.Disagg
	switch {
	case d.PrefillRouter == nil:
		return fmt.Errorf("sim: disaggregation without a prefill router")
	case !(d.Link.BandwidthGBps > 0) || d.Link.LatencyUs < 0 || math.IsInf(d.Link.BandwidthGBps, 0) || math.IsNaN(d.Link.LatencyUs) || math.IsInf(d.Link.LatencyUs, 0):
		return fmt.Errorf("sim: KV link %q: bandwidth must be positive and latency 0 or positive, got %v GB/s and %v us", d.Link.Name, d.Link.BandwidthGBps, d.Link.LatencyUs)
	case !(d.KVBytesPerToken > 0) || math.IsInf(d.KVBytesPerToken, 0):
		return fmt.Errorf("sim: disaggregation needs the KV bytes per token, got %v", d.KVBytesPerToken)
	}
	if err := d.Decider.Validate(); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	p := &pdState{cfg: *d, inflight: map[*serving.Request]*pdReq{}}
	p.handler = route.PDProfileHandler{Decode: s.cfg.Router, Prefill: d.PrefillRouter, Decider: d.Decider, BlockSize: s.cfg.BlockSize}
	for i, r := range roles {
		if r == RolePrefill {
			s.instances[i].prefill = true
			p.prefillIdx = append(p.prefillIdx, i)
		} else {
			p.decodeIdx = append(p.decodeIdx, i)
		}
	}
	if len(p.prefillIdx) == 0 || len(p.decodeIdx) == 0 {
		return fmt.Errorf("sim: disaggregation needs prefill and decode instances, got %d and %d", len(p.prefillIdx), len(p.decodeIdx))
	}
	p.dviews = make([]serving.InstanceView, len(p.decodeIdx))
	p.pviews = make([]serving.InstanceView, len(p.prefillIdx))
	s.pd = p
	return nil
}

// push queues e, noting it in pd.cross when it may put a request on another instance.
// Prefill instances' steps all go through the queue (advance), and decode instances run
// ahead only up to the earliest such event, so a transfer never lands on an instance
// that has run past it.
func (s *simulation) push(e stepEnd) {
	s.queue.push(e)
	if s.pd != nil && s.crossEvent(e) {
		s.pd.cross.push(e.at)
	}
}

func (s *simulation) crossEvent(e stepEnd) bool {
	return e.xfer != nil || s.instances[e.instance].prefill
}

// timeHeap is a min-heap of times.
type timeHeap []float64

func (h *timeHeap) push(t float64) {
	*h = append(*h, t)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if q[p] <= q[i] {
			break
		}
		q[p], q[i] = q[i], q[p]
		i = p
	}
}

func (h *timeHeap) pop() {
	q := *h
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && q[l] < q[m] {
			m = l
		}
		if r := l + 1; r < n && q[r] < q[m] {
			m = r
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	*h = q
}

// peek is the earliest time, +Inf when there is none.
func (h timeHeap) peek() float64 {
	if len(h) == 0 {
		return math.Inf(1)
	}
	return h[0]
}

// routePD routes req through the pd-profile-handler; it reports the instance that gets
// the request now (the prefill instance when disaggregated) and the request it queues.
func (s *simulation) routePD(req *serving.Request) (int, *serving.Request, error) {
	s.pdViews()
	pick := s.pickPD(req)
	return pick.target, pick.req, pick.err
}

// pdViews fills the decode and prefill profiles' views from the router's views.
func (s *simulation) pdViews() {
	p := s.pd
	for k, i := range p.decodeIdx {
		p.dviews[k] = s.views[i]
	}
	for k, i := range p.prefillIdx {
		p.pviews[k] = s.views[i]
	}
}

// pdPick is one run of the pd-profile-handler: the decode instance's index among the
// decode views (d) and in the cluster (decode), the prefill instance (-1 when the decode
// instance runs the request alone), and the instance and request that go out now.
type pdPick struct {
	d, decode, prefill, target int
	req                        *serving.Request
	err                        error
}

// pickPD runs the pd-profile-handler on the views pdViews filled (flow control counts
// the requests it sends between scrapes in them) and registers a disaggregated request.
func (s *simulation) pickPD(req *serving.Request) pdPick {
	p := s.pd
	d, pre := p.handler.Pick(req, p.dviews, p.pviews)
	if d < 0 || d >= len(p.dviews) {
		return pdPick{d: -1, prefill: -1, err: fmt.Errorf("sim: decode router returned %d of %d decode instances", d, len(p.dviews))}
	}
	if pre < 0 {
		return pdPick{d: d, decode: p.decodeIdx[d], prefill: -1, target: p.decodeIdx[d], req: req}
	}
	if pre >= len(p.pviews) {
		return pdPick{d: -1, prefill: -1, err: fmt.Errorf("sim: prefill router returned %d of %d prefill instances", pre, len(p.pviews))}
	}
	half := *req
	half.MaxTokens = 1
	x := &pdReq{req: req, half: &half, prefill: p.prefillIdx[pre], decode: p.decodeIdx[d]}
	p.inflight[x.half] = x
	p.count++
	// Until the next scrape the prefill profile sees the prefill it just sent, as the
	// controller makes the decode profile see the decode (flow.Controller.Pump).
	p.pviews[pre].Waiting++
	return pdPick{d: d, decode: x.decode, prefill: x.prefill, target: x.prefill, req: x.half}
}

// sendKV starts the transfer of a finished prefill half's prompt KV at t: the prefill
// instance keeps the blocks (re-referenced by a holder sequence, since the engine core
// freed the finished sequence's; kv.Manager.Retain, so holding them is not a prefix hit and
// not a block hit an LFU evictor would count) until the transfer lands. hint is seq's block
// table as it was before the engine core freed it (kv.Manager.RetainPrompt).
func (s *simulation) sendKV(x *pdReq, seq *serving.Seq, hint []int32, t float64) {
	x.pre, x.sent = seq, t
	kvm := s.instances[x.prefill].core.KV()
	bs := s.cfg.BlockSize
	h := &serving.Seq{Req: x.half, Status: serving.SeqRunning, Instance: x.prefill}
	// CachedPrefixBlocks then Retain, in one pass: the blocks the prefill computed the
	// prompt in, taken before the engine core freed them, find them without a lookup.
	if !kvm.RetainPrompt(h, hint) {
		s.fail(fmt.Errorf("sim: instance %d cannot hold request %d's KV blocks for the transfer", x.prefill, x.req.ID))
		return
	}
	x.holder = h
	blocks := (x.half.PromptTokens + bs - 1) / bs
	x.transfer = s.pd.cfg.Link.Time(float64(blocks*bs) * s.pd.cfg.KVBytesPerToken)
	s.push(stepEnd{at: t + x.transfer, instance: x.decode, xfer: x})
}

// land completes a transfer at t: the prefill instance frees the blocks it held and the
// decode instance queues the request with its prompt computed but the last token.
func (s *simulation) land(x *pdReq, t float64) {
	s.instances[x.prefill].core.KV().Free(x.holder)
	x.holder = nil
	s.pd.transferSeconds += x.transfer
	delete(s.pd.inflight, x.half)
	s.pd.inflight[x.req] = x
	// Blocks came free on the prefill instance: an idle one may now admit what waits.
	s.wake(x.prefill, t)
	seq := s.instances[x.decode].core.Add(x.req)
	seq.NumComputed = x.req.PromptTokens - 1
	s.wake(x.decode, t)
}

// wake plans instance i's next step at t if it is idle.
func (s *simulation) wake(i int, t float64) {
	if in := &s.instances[i]; !in.busy {
		if end, ok := s.plan(i, t); ok {
			s.push(stepEnd{at: end, instance: i})
		}
	}
}

// decodeRecord completes the record of a disaggregated request's decode half.
func (s *simulation) decodeRecord(x *pdReq, rec *serving.Record) {
	delete(s.pd.inflight, x.req)
	rec.Scheduled = x.pre.FirstScheduled
	rec.CachedTokens = x.pre.NumCachedPrompt
	rec.Preemptions += x.pre.Preemptions
	pi := x.prefill
	rec.PrefillInstance = &pi
	rec.KVTransfer = x.transfer
}

func (s *simulation) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}
