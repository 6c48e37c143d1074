package router

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/serving"
)

// Prefill/decode disaggregation, as llm-d's EPP and routing sidecar run it together. With
// a P/D policy (route.PDProfileHandler, from a P/D EndpointPickerConfig) the router picks
// the decode endpoint with the decode profile among the endpoints its decode filter
// passes, asks the decider, and when it disaggregates picks a prefill endpoint with the
// prefill profile among those its prefill filter passes (llm-d's pd-profile-handler).
// It then runs the two legs of vLLM's NixlConnector protocol itself, as llm-d's sidecar
// does (llm-d-inference-scheduler pkg/sidecar/proxy/connector_nixlv2.go,
// runNIXLProtocolV2):
//
//  1. prefill leg: the client's request with max_tokens 1 (and max_completion_tokens and
//     min_tokens 1 where the client set them), stream false, no stream_options, and kv_transfer_params
//     {do_remote_decode: true, do_remote_prefill: false, remote_*: null}; the engine
//     answers with kv_transfer_params naming the blocks it holds for the decode engine;
//  2. decode leg: the client's request as sent, plus those kv_transfer_params; its
//     response (a stream or not) goes to the client unchanged.
//
// Both legs carry x-request-id, the router's id of the request. Failures: a prefill leg
// that cannot connect, times out or answers 5xx is retried once on another prefill
// endpoint, then the decode endpoint runs the request alone (llm-d's sidecar falls back
// to decode on a prefill 5xx the same way); a prefill 4xx is the client's error and goes
// back to it. A decode 503 with x-servelab-retry: kv-pull (the decode engine could not
// pull the prefill engine's blocks, and freed its own) reruns the whole flow once,
// without that prefill endpoint.

// DefaultPrefillTimeout is Config.PrefillTimeout's default: a long prompt's prefill on a
// CPU engine, well under the prefill engine's 480 s hold of the blocks (vLLM's
// VLLM_NIXL_ABORT_REQUEST_TIMEOUT).
const DefaultPrefillTimeout = 5 * time.Minute

// Headers of the P/D flow.
const (
	// RequestIDHeader carries the router's request id on both legs, as llm-d's sidecar
	// sets it (requestHeaderRequestID).
	RequestIDHeader = "x-request-id"
	// RetryHeader on a decode engine's 503 with value RetryKVPull asks for the whole flow
	// to be rerun: the remote prefill's KV could not be fetched.
	RetryHeader = "x-servelab-retry"
	RetryKVPull = "kv-pull"
	// PrefillEndpointHeader names, on a disaggregated response, the prefill endpoint
	// (host:port) that ran its prompt; llm-d's EPP hands the sidecar the same under this
	// name (pkg/common/routing: PrefillEndpointHeader).
	PrefillEndpointHeader = "x-prefiller-host-port"
)

// llm-d's decision types (pkg/metrics: DecisionTypeDecodeOnly, DecisionTypePrefillDecode).
const (
	decisionDecodeOnly    = "decode-only"
	decisionPrefillDecode = "prefill-decode"
)

// pdMetrics are the P/D flow's counters. The decision counters are llm-d's
// (llm_d_inference_scheduler_disagg_decision_total, and pd_decision_total, which llm-d
// keeps as the deprecated name), counted once per decision the profile handler makes.
type pdMetrics struct {
	disaggDecisions, pdDecisions *prometheus.CounterVec
	prefillLegs                  *prometheus.CounterVec
	fallbacks, kvPullRetries     prometheus.Counter
}

func newPDMetrics(reg *prometheus.Registry) pdMetrics {
	m := pdMetrics{
		disaggDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_d_inference_scheduler_disagg_decision_total",
			Help: "Total number of disaggregation routing decisions made (llm-d's name), by model and decision_type (decode-only, prefill-decode).",
		}, []string{"model_name", "decision_type"}),
		pdDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_d_inference_scheduler_pd_decision_total",
			Help: "Total number of P/D disaggregation decisions made (llm-d's deprecated name of llm_d_inference_scheduler_disagg_decision_total).",
		}, []string{"model_name", "decision_type"}),
		prefillLegs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "servelab_router_prefill_legs_total",
			Help: "Prefill legs of disaggregated requests sent, by outcome: ok (kv_transfer_params came back), no_kv (answered without them: the prompt's one token ended the request, so no blocks are held; the decode endpoint runs it alone), failed (connection error, timeout, 5xx, a bad answer: retried elsewhere or fallen back), rejected (4xx, returned to the client).",
		}, []string{"outcome"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "servelab_router_pd_fallbacks_total",
			Help: "Disaggregated requests the decode endpoint ran alone because their prefill legs failed.",
		}),
		kvPullRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "servelab_router_kv_pull_retries_total",
			Help: "Disaggregated requests rerun (prefill and decode) after the decode engine could not pull the prefill's KV (503, x-servelab-retry: kv-pull).",
		}),
	}
	reg.MustRegister(m.disaggDecisions, m.pdDecisions, m.prefillLegs, m.fallbacks, m.kvPullRetries)
	for _, o := range []string{"ok", "no_kv", "failed", "rejected"} {
		m.prefillLegs.WithLabelValues(o)
	}
	return m
}

func newIDPrefix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// pickPD runs the P/D handler: the decode endpoint among the healthy endpoints the
// decode filter passes and not in excludeD, and, when the decider disaggregates, the
// prefill endpoint among those the prefill filter passes and not in excludeP (nil: the
// decode endpoint runs the request alone). at is when the handler ran.
func (r *Router) pickPD(req *serving.Request, excludeD, excludeP map[*endpoint]bool) (d, p *endpoint, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.views, r.pviews = r.views[:0], r.pviews[:0]
	var dc, pc []*endpoint
	for _, e := range r.endpoints {
		if !e.healthy() {
			continue
		}
		if !excludeD[e] && r.pd.DecodeFilter.Allows(e.role) {
			r.views = append(r.views, e.view())
			dc = append(dc, e)
		}
		if !excludeP[e] && r.pd.PrefillFilter.Allows(e.role) {
			r.pviews = append(r.pviews, e.view())
			pc = append(pc, e)
		}
	}
	if len(dc) == 0 {
		return nil, nil, time.Time{}
	}
	at = time.Now()
	i, j := r.pd.Pick(req, r.views, r.pviews)
	r.scoring.Observe(time.Since(at).Seconds())
	if i < 0 || i >= len(dc) {
		i = 0
	}
	d = dc[i]
	if j >= 0 && j < len(pc) {
		p = pc[j]
	}
	return d, p, at
}

// pickPrefill picks another prefill endpoint with the prefill profile alone.
func (r *Router) pickPrefill(req *serving.Request, exclude map[*endpoint]bool) *endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pviews = r.pviews[:0]
	var pc []*endpoint
	for _, e := range r.endpoints {
		if e.healthy() && !exclude[e] && r.pd.PrefillFilter.Allows(e.role) {
			r.pviews = append(r.pviews, e.view())
			pc = append(pc, e)
		}
	}
	if len(pc) == 0 {
		return nil
	}
	j := r.pd.Prefill.Route(req, r.pviews)
	if j < 0 || j >= len(pc) {
		j = 0
	}
	return pc[j]
}

// countPDDecision counts a P/D decision on llm-d's counters, by the body's model.
func (r *Router) countPDDecision(body []byte, disaggregated bool) {
	var m struct {
		Model string `json:"model"`
	}
	model := "unknown" // llm-d's label for a request without a model
	if json.Unmarshal(body, &m) == nil && m.Model != "" && len(m.Model) <= 256 {
		model = m.Model
	}
	decision := decisionDecodeOnly
	if disaggregated {
		decision = decisionPrefillDecode
	}
	r.pdm.disaggDecisions.WithLabelValues(model, decision).Inc()
	r.pdm.pdDecisions.WithLabelValues(model, decision).Inc()
}

// servePD serves a request with the P/D handler and, when it disaggregates, the two legs.
// admitted, when flow control admitted the request, holds the handler's picks at
// admission (its e the decode endpoint, its p the prefill endpoint or nil): the first
// attempt uses them rather than running the handler again on other views.
func (r *Router) servePD(w http.ResponseWriter, req *http.Request, body []byte, rr *serving.Request, admitted flowResult) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		writeError(w, http.StatusBadRequest, "BadRequestError", "the request body is not a JSON object")
		return
	}
	id := r.idPrefix + "-" + strconv.FormatUint(rr.ID, 10)
	ctx := req.Context()
	triedD, triedP := map[*endpoint]bool{}, map[*endpoint]bool{}
	kvRetried := false
	var routedAt time.Time
	for attempt := 0; ; attempt++ {
		d, p, at := admitted.e, admitted.p, admitted.at
		if attempt > 0 || d == nil {
			d, p, at = r.pickPD(rr, triedD, triedP)
		}
		if routedAt.IsZero() {
			routedAt = at
		}
		if d == nil {
			writeError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "no healthy decode endpoint left to try")
			return
		}
		if attempt > 0 {
			r.retries.Inc()
		}
		r.countPDDecision(body, p != nil)

		dbody := body
		var kv json.RawMessage
		var prefilled *endpoint
		if p != nil {
			var rejected *bufferedResponse
			prefilled, kv, rejected = r.prefill(ctx, req, fields, rr, p, triedP, id)
			switch {
			case ctx.Err() != nil:
				return // the client went away
			case rejected != nil:
				rejected.writeTo(w)
				return
			case prefilled == nil:
				// The decode endpoint runs the request alone.
			default:
				if dbody, _ = withFields(fields, map[string]any{"kv_transfer_params": kv}); dbody == nil {
					writeError(w, http.StatusInternalServerError, "InternalServerError", "could not encode the decode leg's body")
					return
				}
			}
		}
		triedD[d] = true
		resp, err := r.send(ctx, d, req, dbody, id)
		if err != nil || resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
			if err == nil {
				resp.Body.Close()
				d.markDown("proxying: " + resp.Status)
			} else if ctx.Err() != nil {
				return
			} else {
				d.markDown("proxying: " + cause(err))
			}
			// Another decode endpoint; the prefill endpoint did its part and may serve the
			// rerun (the blocks it holds for this leg are freed at its
			// --kv-transfer-timeout, as nobody pulls them).
			delete(triedP, prefilled)
			continue
		}
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(RetryHeader) == RetryKVPull && prefilled != nil && !kvRetried {
			// The decode engine freed what it allocated; rerun the flow once, without the
			// prefill endpoint whose blocks could not be pulled. The decode endpoint is
			// fine and may be picked again.
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			kvRetried = true
			triedP[prefilled] = true
			delete(triedD, d)
			r.pdm.kvPullRetries.Inc()
			continue
		}
		d.decisions.Inc()
		w.Header().Set(serving.ServedEndpointHeader, d.host)
		w.Header().Set(serving.RoutedAtHeader, strconv.FormatInt(routedAt.UnixNano(), 10))
		if prefilled != nil {
			w.Header().Set(PrefillEndpointHeader, prefilled.host)
		}
		copyResponse(w, resp)
		resp.Body.Close()
		return
	}
}

// bufferedResponse is a whole response read from an endpoint.
type bufferedResponse struct {
	status int
	header http.Header
	body   []byte
}

func (b *bufferedResponse) writeTo(w http.ResponseWriter) {
	for k, vs := range b.header {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(b.status)
	w.Write(b.body)
}

// prefill runs the prefill leg on p and, if it fails, once more on another prefill
// endpoint. It returns the endpoint that prefilled and the kv_transfer_params it
// answered; or a 4xx response for the client (rejected); or neither, when the decode
// endpoint should run the request alone: every leg failed (a fallback), or the prefill
// answered without kv_transfer_params. Failed endpoints join tried.
func (r *Router) prefill(ctx context.Context, in *http.Request, fields map[string]json.RawMessage, rr *serving.Request,
	p *endpoint, tried map[*endpoint]bool, id string) (*endpoint, json.RawMessage, *bufferedResponse) {
	set := map[string]any{
		"max_tokens": 1,
		"stream":     false,
		"kv_transfer_params": map[string]any{
			"do_remote_decode": true, "do_remote_prefill": false,
			"remote_engine_id": nil, "remote_block_ids": nil, "remote_host": nil, "remote_port": nil,
		},
		"stream_options": nil, // removed
	}
	if _, ok := fields["max_completion_tokens"]; ok {
		set["max_completion_tokens"] = 1
	}
	// vLLM's min_tokens (servelab bench forces output lengths with it) above the leg's one
	// token is a 400; llm-d's sidecar caps it to 1 on the prefill leg as well.
	if v, ok := fields["min_tokens"]; ok && string(v) != "null" {
		set["min_tokens"] = 1
	}
	body, err := withFields(fields, set)
	if err != nil {
		return nil, nil, nil
	}
	for try := 0; try < 2 && p != nil; try++ {
		tried[p] = true
		kv, rejected, why := r.prefillLeg(ctx, in, p, body, id)
		switch {
		case ctx.Err() != nil:
			return nil, nil, nil
		case why == errNoKV:
			// vLLM holds a prefill's blocks only when max_tokens ended it; a request that
			// stopped at its first token (EOS, a stop string) holds none and another prefill
			// endpoint would do the same: the decode endpoint runs it alone, as llm-d's
			// sidecar sends the decode without kv_transfer_params.
			r.pdm.prefillLegs.WithLabelValues("no_kv").Inc()
			return nil, nil, nil
		case rejected != nil:
			r.pdm.prefillLegs.WithLabelValues("rejected").Inc()
			return nil, nil, rejected
		case kv != nil:
			r.pdm.prefillLegs.WithLabelValues("ok").Inc()
			return p, kv, nil
		}
		r.pdm.prefillLegs.WithLabelValues("failed").Inc()
		r.cfg.Logf("request %s: prefill leg on %s failed: %s", id, p.url, why)
		p = r.pickPrefill(rr, tried)
	}
	r.pdm.fallbacks.Inc()
	return nil, nil, nil
}

// errNoKV is prefillLeg's reason for a 200 answer without kv_transfer_params.
const errNoKV = "the response carries no kv_transfer_params"

// maxPrefillResponse bounds a prefill leg's response: one generated token and the
// kv_transfer_params (block ids of the longest prompt) fit many times over.
const maxPrefillResponse = 8 << 20

// prefillLeg sends one prefill leg. It returns the response's kv_transfer_params; or a
// 4xx response to hand the client; or why the leg failed (marking p down when it could
// not be reached or failed with a 5xx other than 503).
func (r *Router) prefillLeg(ctx context.Context, in *http.Request, p *endpoint, body []byte, id string) (json.RawMessage, *bufferedResponse, string) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PrefillTimeout)
	defer cancel()
	resp, err := r.send(ctx, p, in, body, id)
	if err != nil {
		if in.Context().Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
			p.markDown("prefill leg: " + cause(err))
		}
		return nil, nil, cause(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxPrefillResponse+1))
	switch {
	case err != nil:
		return nil, nil, "reading the response: " + cause(err)
	case len(data) > maxPrefillResponse:
		return nil, nil, fmt.Sprintf("the response is over %d bytes", maxPrefillResponse)
	case resp.StatusCode >= 500:
		if resp.StatusCode != http.StatusServiceUnavailable {
			p.markDown("prefill leg: " + resp.Status)
		}
		return nil, nil, resp.Status
	case resp.StatusCode >= 400:
		return nil, &bufferedResponse{status: resp.StatusCode, header: resp.Header.Clone(), body: data}, ""
	case resp.StatusCode != http.StatusOK:
		return nil, nil, resp.Status
	}
	var out struct {
		KV json.RawMessage `json:"kv_transfer_params"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, nil, "the response is not JSON: " + err.Error()
	}
	if len(out.KV) == 0 || bytes.Equal(out.KV, []byte("null")) {
		return nil, nil, errNoKV
	}
	var kv struct {
		DoRemotePrefill bool `json:"do_remote_prefill"`
	}
	if json.Unmarshal(out.KV, &kv) != nil || !kv.DoRemotePrefill {
		return nil, nil, "its kv_transfer_params are not an object with do_remote_prefill true: " + string(out.KV[:min(len(out.KV), 200)])
	}
	return out.KV, nil, ""
}

// send posts body to e at the client's path with its content headers and authorization,
// and the router's request id.
func (r *Router) send(ctx context.Context, e *endpoint, in *http.Request, body []byte, id string) (*http.Response, error) {
	out, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+in.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Content-Type", "Accept"} {
		if v := in.Header.Get(h); v != "" {
			out.Header.Set(h, v)
		}
	}
	out.Header.Set(RequestIDHeader, id)
	r.authorize(out, in.Header)
	return r.cfg.Client.Do(out)
}

// withFields is the request object fields with set applied: a nil value removes the
// field. The other fields keep their bytes as the client sent them.
func withFields(fields map[string]json.RawMessage, set map[string]any) ([]byte, error) {
	out := make(map[string]json.RawMessage, len(fields)+len(set))
	for k, v := range fields {
		out[k] = v
	}
	for k, v := range set {
		if v == nil {
			delete(out, k)
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		out[k] = b
	}
	return json.Marshal(out)
}
