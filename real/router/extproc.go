package router

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procmode "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"servelab/policies/flow"
	"servelab/policies/route"
	"servelab/serving"
)

// The router is also the Gateway API Inference Extension's endpoint picker (EPP): a gateway
// (Envoy, or any data plane that speaks Envoy's ext_proc) sends it each request's headers and
// body over gRPC, and it answers with the endpoint to send the request to. The names below
// are GIE's, from docs/proposals/004-endpoint-picker-protocol/README.md and
// pkg/epp/metadata/consts.go (the same constants are in pkg/lwepp/metadata/consts.go).
const (
	// DestinationEndpointKey is the request header, and the key inside the
	// DestinationEndpointNamespace of the ext_proc response's dynamic metadata, that name
	// the picked endpoint(s): "ip:port", or "ip:port,ip:port,..." where fallbacks follow the
	// primary and the data plane tries them in order.
	DestinationEndpointKey = "x-gateway-destination-endpoint"
	// DestinationEndpointNamespace is the dynamic-metadata namespace the destination is
	// wrapped in.
	DestinationEndpointNamespace = "envoy.lb"
	// SubsetFilterNamespace and SubsetFilterKey are where the data plane may put, in the
	// ext_proc request's metadata_context.filter_metadata, the endpoints the picker must
	// choose among.
	SubsetFilterNamespace = "envoy.lb.subset_hint"
	SubsetFilterKey       = "x-gateway-destination-endpoint-subset"
	// DestinationEndpointServedKey, in the DestinationEndpointNamespace of the response's
	// metadata_context, is the endpoint that served the request (the data plane may have
	// used a fallback); it is serving.ServedEndpointHeader's name.
	DestinationEndpointServedKey = serving.ServedEndpointHeader
)

// bodyByteLimit is the largest body chunk sent back to the data plane in one message:
// GIE's BodyByteLimit (pkg/common/envoy/chunking.go), under the 64 KiB some Envoy builds
// allow per streamed chunk.
const bodyByteLimit = 62000

// ExtProcConfig configures the router's ext_proc server.
type ExtProcConfig struct {
	// Fallbacks is how many endpoints to name after the primary in
	// x-gateway-destination-endpoint, for the data plane to retry in order (GIE's fallback
	// list). Each is the policy's pick among the endpoints not yet named, the order the
	// HTTP proxy fails over in; each calls the policy, so a stateful policy (round-robin's
	// cursor, prefix-affinity's table) advances once per name. 0, the default, names one.
	Fallbacks int
}

// NewExtProcServer returns a gRPC server offering the Gateway API Inference Extension's
// endpoint-picker protocol (envoy.service.ext_proc.v3.ExternalProcessor) over the router's
// endpoints, views and policy, and the gRPC health service with the checks the protocol
// names (liveness, readiness, and the ext_proc service itself). The caller serves it on a
// listener and stops it; Router.Close does not.
func (r *Router) NewExtProcServer(cfg ExtProcConfig, opts ...grpc.ServerOption) (*grpc.Server, error) {
	if cfg.Fallbacks < 0 {
		return nil, fmt.Errorf("router: ext_proc fallbacks %d: want 0 or more", cfg.Fallbacks)
	}
	// A buffered body arrives in one message: let one as large as the proxy accepts in.
	opts = append([]grpc.ServerOption{grpc.MaxRecvMsgSize(maxBody + 1<<20)}, opts...)
	s := grpc.NewServer(opts...)
	extprocv3.RegisterExternalProcessorServer(s, &extProc{r: r, cfg: cfg})
	healthpb.RegisterHealthServer(s, &epHealth{r: r})
	return s, nil
}

// extProc serves ext_proc streams, one per HTTP request.
type extProc struct {
	extprocv3.UnimplementedExternalProcessorServer
	r   *Router
	cfg ExtProcConfig
}

// exchange is one HTTP request's ext_proc stream.
type exchange struct {
	*extProc
	ctx context.Context
	// bodyMode and respMode are the data plane's request and response body send modes
	// (its protocol_config); without one, FULL_DUPLEX_STREAMED, the mode GIE configures its
	// gateways with and the only one its picker implements.
	bodyMode, respMode procmode.ProcessingMode_BodySendMode

	path, authorization string
	// objective and fairness are the request's x-gateway-inference-objective (or
	// x-llm-d-inference-objective) and x-gateway-inference-fairness-id, for flow control.
	objective, fairness string
	objectives          http.Header // the request's x-slo-ttft-ms and x-slo-tpot-ms; nil without
	subset              []string    // the data plane's subset hint; nil without one
	hasSubset           bool
	body                []byte
	picked              bool
	destination         []*endpoint

	// release frees the request's place among the router's requests in flight, once.
	release  func()
	released bool
}

// Process implements the ext_proc stream: the request's headers, its body (in chunks, or
// buffered in one message), then the response's headers and body.
func (x *extProc) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	ex := &exchange{extProc: x, ctx: srv.Context(),
		bodyMode: procmode.ProcessingMode_FULL_DUPLEX_STREAMED, respMode: procmode.ProcessingMode_FULL_DUPLEX_STREAMED}
	// The stream ends when the data plane is done with the request or gives it up (a client
	// that went away): either way the request is no longer in flight.
	defer ex.done()
	// The request phase, from the stream's start until the pick, is bounded by the router's
	// body timeout, as its HTTP path bounds reading a body: a data plane (or a client behind
	// it) that opens a stream and trickles or sends nothing would otherwise hold the stream
	// and its place in flight for ever. The response phase is not bounded (SSE streams).
	var requestPhase <-chan time.Time
	if d := x.r.cfg.BodyTimeout; d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		requestPhase = t.C
	}
	msgs := make(chan recvResult)
	go func() {
		for {
			req, err := srv.Recv()
			select {
			case msgs <- recvResult{req, err}:
			case <-ex.ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		var req *extprocv3.ProcessingRequest
		var err error
		select {
		case m := <-msgs:
			req, err = m.req, m.err
		case <-ex.ctx.Done():
			return nil // the data plane gave the request up
		case <-requestPhase:
			if !ex.picked {
				return status.Errorf(codes.DeadlineExceeded, "ext_proc: the request's headers and body did not arrive within the router's body timeout (%s, --body-timeout)", x.r.cfg.BodyTimeout)
			}
			continue
		}
		if err == io.EOF || status.Code(err) == codes.Canceled {
			return nil
		}
		if err != nil {
			return err
		}
		resps, err := ex.handle(req)
		if err != nil {
			return err
		}
		for _, resp := range resps {
			if err := srv.Send(resp); err != nil {
				return err
			}
			if _, ok := resp.Response.(*extprocv3.ProcessingResponse_ImmediateResponse); ok {
				return nil // the data plane answers the client and closes the stream
			}
		}
	}
}

// recvResult is one Recv's outcome, handed from the receiving goroutine.
type recvResult struct {
	req *extprocv3.ProcessingRequest
	err error
}

// done takes the request out of flight, once.
func (ex *exchange) done() {
	if ex.release != nil && !ex.released {
		ex.released = true
		ex.release()
	}
}

// handle answers one message of the stream.
func (ex *exchange) handle(req *extprocv3.ProcessingRequest) ([]*extprocv3.ProcessingResponse, error) {
	if req.GetObservabilityMode() {
		return nil, status.Error(codes.FailedPrecondition, "ext_proc observability_mode: the endpoint picker's answers would be ignored; configure the filter without it")
	}
	if pc := req.GetProtocolConfig(); pc != nil {
		ex.bodyMode, ex.respMode = pc.GetRequestBodyMode(), pc.GetResponseBodyMode()
		switch ex.bodyMode {
		case procmode.ProcessingMode_FULL_DUPLEX_STREAMED, procmode.ProcessingMode_BUFFERED:
		default:
			return nil, status.Errorf(codes.InvalidArgument, "ext_proc request_body_mode %s: the endpoint picker reads the whole request body before the request's headers go upstream; configure FULL_DUPLEX_STREAMED (as the Gateway API Inference Extension does) or BUFFERED", ex.bodyMode)
		}
	}
	ex.readSubset(req.GetMetadataContext())
	switch v := req.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return ex.requestHeaders(v.RequestHeaders), nil
	case *extprocv3.ProcessingRequest_RequestBody:
		return ex.requestBody(v.RequestBody), nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		var out []*extprocv3.ProcessingResponse
		if !ex.picked {
			// The streamed body ended with trailers rather than end_of_stream.
			out = ex.route(false, false)
			if isImmediate(out) {
				return out, nil
			}
		}
		return append(out, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{}}}), nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return ex.responseHeaders(v.ResponseHeaders, req.GetMetadataContext()), nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		return ex.responseBody(v.ResponseBody), nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		ex.done()
		return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{}}}}, nil
	}
	return nil, nil // a message of a newer protocol with no request part (flow control)
}

func (ex *exchange) requestHeaders(h *extprocv3.HttpHeaders) []*extprocv3.ProcessingResponse {
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch strings.ToLower(hv.GetKey()) {
		case ":path":
			ex.path = headerValue(hv)
		case "authorization":
			ex.authorization = headerValue(hv)
		case flow.ObjectiveHeader:
			ex.objective = headerValue(hv)
		case otherObjectiveHeader:
			if ex.objective == "" {
				ex.objective = headerValue(hv)
			}
		case flow.FairnessIDHeader:
			ex.fairness = headerValue(hv)
		case route.TTFTSLOHeader, route.TPOTSLOHeader:
			if ex.objectives == nil {
				ex.objectives = http.Header{}
			}
			ex.objectives.Set(hv.GetKey(), headerValue(hv))
		}
	}
	// As the proxy's guard: the router's own key on /v1/* (Config.APIKey).
	if ex.r.cfg.APIKey != "" && strings.HasPrefix(ex.path, "/v1") && !ex.r.keyMatches(ex.authorization) {
		return immediate(http.StatusUnauthorized, "AuthenticationError",
			"Unauthorized: a valid API key is required (Authorization: Bearer <key>)", "WWW-Authenticate", "Bearer")
	}
	if h.GetEndOfStream() {
		// No body (a GET): route on the path alone. GIE's picker sends such requests to a
		// random endpoint (pkg/epp/handlers/request.go); the policy picks here too.
		return ex.route(true, true)
	}
	if ex.bodyMode == procmode.ProcessingMode_BUFFERED {
		// The data plane waits for this answer before it sends the buffered body; the
		// destination goes with the body's answer, whose header mutation still applies.
		return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{}}}}
	}
	// FULL_DUPLEX_STREAMED: the headers' answer waits for the body, as GIE's picker does
	// (pkg/epp/handlers/server.go sends it once the body's end_of_stream arrived).
	return nil
}

func (ex *exchange) requestBody(b *extprocv3.HttpBody) []*extprocv3.ProcessingResponse {
	if len(ex.body)+len(b.GetBody()) > maxBody {
		return immediate(http.StatusRequestEntityTooLarge, "RequestTooLargeError", fmt.Sprintf("the request body is over %d bytes", maxBody))
	}
	ex.body = append(ex.body, b.GetBody()...)
	if ex.picked {
		return nil
	}
	// A buffered body is one message (without end_of_stream when trailers follow); a
	// streamed one ends with end_of_stream, or with trailers.
	if ex.bodyMode != procmode.ProcessingMode_BUFFERED && !b.GetEndOfStream() {
		return nil // more chunks follow
	}
	return ex.route(false, true)
}

// route picks the destination for the request read so far and answers the data plane: in
// FULL_DUPLEX_STREAMED mode the headers' answer with the destination, then the body sent
// back (the data plane forwards only what the picker returns); in BUFFERED mode the body's
// answer carrying the destination. headersOnly is a request without a body; eos, whether
// the body sent back ends the request (no trailers follow).
func (ex *exchange) route(headersOnly, eos bool) []*extprocv3.ProcessingResponse {
	ex.picked = true
	if !headersOnly {
		// GIE's OpenAI parser (pkg/epp/framework/plugins/requesthandling/parsers/openai)
		// unmarshals the body into a JSON object and answers 400 when it cannot. (GIE's
		// director also refuses a body without "model", for its model rewrites; the router,
		// as its proxy, leaves the body's fields to the engine.)
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(ex.body, &obj); err != nil {
			return immediate(http.StatusBadRequest, "BadRequestError", "the request body is not a JSON object: "+err.Error())
		}
	}
	// Into flight from the pick to the response's end, as the proxy's MaxInFlight counts
	// a request for as long as it is served.
	if ex.r.inflight != nil {
		select {
		case ex.r.inflight <- struct{}{}:
			ex.release = func() { <-ex.r.inflight }
		default:
			ex.r.shed.Inc()
			return immediate(http.StatusTooManyRequests, "RateLimitError",
				fmt.Sprintf("the router is serving its limit of %d requests at once; retry later", cap(ex.r.inflight)), "Retry-After", "1")
		}
	}
	rr := ex.r.routingRequest(ex.ctx, ex.path, ex.body)
	if err := withObjectives(rr, ex.objectives); err != nil {
		return immediate(http.StatusBadRequest, "BadRequestError", err.Error())
	}
	exclude := ex.outsideSubset()
	// With a P/D policy the destination is the decode endpoint and, when the decider
	// disaggregates, the prefill endpoint goes in llm-d's x-prefiller-host-port header for
	// the routing sidecar in front of the decode engine, as llm-d's EPP hands it
	// (disagg_profile_handler.go PreRequest); the sidecar runs the two legs.
	var prefill *endpoint
	if ex.r.flow != nil {
		// Flow control, as the proxy's (flow.go): the request waits here while the
		// endpoints are saturated, or is refused with GIE's statuses. The body goes upstream
		// unchanged, so the objective's engine priority is not added to it.
		ex.r.resolveObjective(ex.objective, ex.fairness, ex.body, rr)
		res, gone := ex.r.flowWait(ex.ctx, rr)
		switch {
		case gone:
			ex.done()
			return immediate(http.StatusServiceUnavailable, "ServiceUnavailableError", "client disconnected while held by flow control")
		case res.outcome != flow.Dispatched:
			ex.done()
			if res.outcome.HTTPStatus() == http.StatusTooManyRequests {
				return immediate(http.StatusTooManyRequests, "RateLimitError", res.outcome.Message(), "Retry-After", "1")
			}
			return immediate(res.outcome.HTTPStatus(), "ServiceUnavailableError", res.outcome.Message())
		case res.e != nil && !exclude[res.e]:
			ex.destination = append(ex.destination, res.e)
			exclude[res.e] = true
			if ex.r.pd != nil {
				// The P/D handler ran at admission (flowRoute): its decode endpoint is
				// res.e and its prefill endpoint res.p; it does not run again.
				prefill = res.p
				ex.r.countPDDecision(ex.body, prefill != nil)
			}
		}
	}
	if ex.r.pd != nil && len(ex.destination) == 0 {
		d, p, _ := ex.r.pickPD(rr, exclude, nil)
		if d != nil {
			ex.destination = append(ex.destination, d)
			exclude[d] = true
			prefill = p
			ex.r.countPDDecision(ex.body, p != nil)
		}
	}
	for len(ex.destination) < 1+ex.cfg.Fallbacks {
		e := ex.r.pick(rr, exclude)
		if e == nil {
			break
		}
		ex.destination = append(ex.destination, e)
		exclude[e] = true
	}
	if len(ex.destination) == 0 {
		ex.done()
		msg := "no healthy endpoint"
		if ex.hasSubset {
			msg = fmt.Sprintf("no healthy endpoint in the gateway's subset %q", ex.subset)
		}
		// The protocol: 503 when there is no ready endpoint, or none of the subset is.
		return immediate(http.StatusServiceUnavailable, "ServiceUnavailableError", msg)
	}
	ex.r.decisions.WithLabelValues(ex.destination[0].url).Inc()
	names := make([]string, len(ex.destination))
	for i, e := range ex.destination {
		names[i] = hostPort(e)
	}
	dest := strings.Join(names, ",")
	set := []*corev3.HeaderValueOption{setHeader(DestinationEndpointKey, dest)}
	if prefill != nil {
		set = append(set, setHeader(PrefillEndpointHeader, hostPort(prefill)))
	}
	if ex.r.cfg.EngineAPIKey != "" {
		// As the proxy: the engines' key replaces the client's Authorization header.
		set = append(set, setHeader("authorization", "Bearer "+ex.r.cfg.EngineAPIKey))
	}
	// The body goes upstream unchanged, so its Content-Length stands; GIE sets
	// Content-Length only because it may rewrite the body (the model name).
	common := &extprocv3.CommonResponse{ClearRouteCache: true, HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: set}}
	meta := destinationMetadata(dest)
	if headersOnly || ex.bodyMode != procmode.ProcessingMode_BUFFERED {
		out := []*extprocv3.ProcessingResponse{{
			Response:        &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: common}},
			DynamicMetadata: meta,
		}}
		if !headersOnly {
			out = append(out, streamedBody(ex.body, eos, false)...)
		}
		ex.body = nil
		return out
	}
	ex.body = nil
	return []*extprocv3.ProcessingResponse{{
		Response:        &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: common}},
		DynamicMetadata: meta,
	}}
}

// outsideSubset is the endpoints the data plane's subset hint leaves out. As GIE's
// lightweight picker (pkg/lwepp/handlers/request.go), an entry "ip:port" admits that
// endpoint and a bare "ip" every endpoint on that address; an empty list admits none.
func (ex *exchange) outsideSubset() map[*endpoint]bool {
	out := map[*endpoint]bool{}
	if !ex.hasSubset {
		return out
	}
	hosts, hostPorts := map[string]bool{}, map[string]bool{}
	for _, s := range ex.subset {
		if h, p, err := net.SplitHostPort(s); err == nil {
			hostPorts[net.JoinHostPort(h, p)] = true
		} else {
			hosts[strings.Trim(s, "[]")] = true
		}
	}
	for _, e := range ex.r.snapshot() {
		hp := hostPort(e)
		h, _, _ := net.SplitHostPort(hp)
		if !hostPorts[hp] && !hosts[h] {
			out[e] = true
		}
	}
	return out
}

// readSubset reads the subset hint if the message's metadata carries one. GIE's picker
// reads the metadata of every message (pkg/epp/handlers/server.go); a later hint replaces
// an earlier one. The value is a list of "ip:port" strings, or (from header-to-metadata
// filters) one comma-separated string, as pkg/lwepp/handlers/request.go accepts.
func (ex *exchange) readSubset(md *corev3.Metadata) {
	ns, ok := md.GetFilterMetadata()[SubsetFilterNamespace]
	if !ok {
		return
	}
	v, ok := ns.GetFields()[SubsetFilterKey]
	if !ok {
		return
	}
	ex.hasSubset, ex.subset = true, []string{}
	var items []string
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		items = []string{k.StringValue}
	case *structpb.Value_ListValue:
		for _, item := range k.ListValue.GetValues() {
			if s, ok := item.GetKind().(*structpb.Value_StringValue); ok {
				items = append(items, s.StringValue)
			}
		}
	}
	for _, item := range items {
		for s := range strings.SplitSeq(item, ",") {
			if s = strings.TrimSpace(s); s != "" {
				ex.subset = append(ex.subset, s)
			}
		}
	}
}

func (ex *exchange) responseHeaders(h *extprocv3.HttpHeaders, md *corev3.Metadata) []*extprocv3.ProcessingResponse {
	// Name the endpoint that served the response, as the proxy does: the data plane's
	// report (the protocol's x-gateway-destination-endpoint-served), else the only
	// endpoint it was given.
	served := ""
	if ns, ok := md.GetFilterMetadata()[DestinationEndpointNamespace]; ok {
		served = ns.GetFields()[DestinationEndpointServedKey].GetStringValue()
	}
	if served == "" && len(ex.destination) == 1 {
		served = hostPort(ex.destination[0])
	}
	common := &extprocv3.CommonResponse{}
	if served != "" {
		common.HeaderMutation = &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader(serving.ServedEndpointHeader, served)}}
	}
	if h.GetEndOfStream() {
		ex.done()
	}
	return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
		ResponseHeaders: &extprocv3.HeadersResponse{Response: common}}}}
}

func (ex *exchange) responseBody(b *extprocv3.HttpBody) []*extprocv3.ProcessingResponse {
	eos := b.GetEndOfStream()
	if eos {
		ex.done()
	}
	if ex.respMode == procmode.ProcessingMode_FULL_DUPLEX_STREAMED {
		// The data plane forwards only what the picker sends back: each chunk as it came,
		// so SSE streams are not held (GIE sends streamed responses back chunk by chunk).
		return streamedBody(b.GetBody(), eos, true)
	}
	return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_ResponseBody{
		ResponseBody: &extprocv3.BodyResponse{}}}}
}

// streamedBody is body as FULL_DUPLEX_STREAMED body answers, in chunks of at most
// bodyByteLimit with end_of_stream on the last when eos (GIE's BuildChunkedBodyResponses);
// an empty body is one empty chunk. response picks the response direction.
func streamedBody(body []byte, eos, response bool) []*extprocv3.ProcessingResponse {
	var out []*extprocv3.ProcessingResponse
	for start := 0; start == 0 || start < len(body); {
		end := min(start+bodyByteLimit, len(body))
		br := &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
			Mutation: &extprocv3.BodyMutation_StreamedResponse{StreamedResponse: &extprocv3.StreamedBodyResponse{
				Body: body[start:end], EndOfStream: eos && end == len(body),
			}},
		}}}
		if response {
			out = append(out, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}})
		} else {
			out = append(out, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: br}})
		}
		if end == len(body) {
			break
		}
		start = end
	}
	return out
}

// destinationMetadata is the dynamic metadata naming the destination:
// {"envoy.lb": {"x-gateway-destination-endpoint": dest}}, the header's value.
func destinationMetadata(dest string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		DestinationEndpointNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			DestinationEndpointKey: structpb.NewStringValue(dest),
		}}),
	}}
}

// setHeader sets a request or response header, replacing any value the client sent (a
// client must not choose its own x-gateway-destination-endpoint). GIE leaves the append
// action at its default, which appends to an existing header.
func setHeader(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: key, RawValue: []byte(value)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// immediate answers the client directly with an OpenAI error body, as the proxy's
// writeError: GIE's picker answers its errors with an ImmediateResponse of the status its
// error code maps to (pkg/common/error/error.go: BadRequest 400, ServiceUnavailable 503,
// ResourceExhausted 429). kv are extra response headers, in pairs.
func immediate(code int, typ, msg string, kv ...string) []*extprocv3.ProcessingResponse {
	body, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": code}})
	set := []*corev3.HeaderValueOption{setHeader("content-type", "application/json")}
	for i := 0; i+1 < len(kv); i += 2 {
		set = append(set, setHeader(strings.ToLower(kv[i]), kv[i+1]))
	}
	return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status:  &typev3.HttpStatus{Code: typev3.StatusCode(code)},
		Headers: &extprocv3.HeaderMutation{SetHeaders: set},
		Body:    append(body, '\n'),
		Details: "servelab_router_" + typ,
	}}}}
}

func isImmediate(resps []*extprocv3.ProcessingResponse) bool {
	for _, r := range resps {
		if _, ok := r.Response.(*extprocv3.ProcessingResponse_ImmediateResponse); ok {
			return true
		}
	}
	return false
}

// headerValue is a header's value, which data planes send in raw_value (Envoy) or value
// (GIE's pkg/common/envoy/headers.go GetHeaderValue reads both).
func headerValue(h *corev3.HeaderValue) string {
	if len(h.GetRawValue()) > 0 {
		return string(h.GetRawValue())
	}
	return h.GetValue()
}

// hostPort is the endpoint as the protocol names endpoints, "ip:port" (a URL without a
// port gets its scheme's).
func hostPort(e *endpoint) string {
	if _, _, err := net.SplitHostPort(e.host); err == nil {
		return e.host
	}
	port := "80"
	if strings.HasPrefix(e.url, "https://") {
		port = "443"
	}
	return net.JoinHostPort(strings.Trim(e.host, "[]"), port)
}

// epHealth is the gRPC health service with the checks GIE's protocol document names:
// liveness (the process answers), and readiness and the ext_proc service (at least one
// endpoint is healthy, the router's /health).
type epHealth struct {
	healthpb.UnimplementedHealthServer
	r *Router
}

func (h *epHealth) status(service string) (healthpb.HealthCheckResponse_ServingStatus, bool) {
	switch service {
	case "", "liveness":
		return healthpb.HealthCheckResponse_SERVING, true
	case "readiness", extprocv3.ExternalProcessor_ServiceDesc.ServiceName:
		for _, e := range h.r.snapshot() {
			if e.healthy() {
				return healthpb.HealthCheckResponse_SERVING, true
			}
		}
		return healthpb.HealthCheckResponse_NOT_SERVING, true
	}
	return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, false
}

func (h *epHealth) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st, ok := h.status(req.GetService())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown service %q; the endpoint picker's are liveness, readiness and %s", req.GetService(), extprocv3.ExternalProcessor_ServiceDesc.ServiceName)
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

// Watch sends the service's status, then each change, read at the scrape interval.
func (h *epHealth) Watch(req *healthpb.HealthCheckRequest, srv healthpb.Health_WatchServer) error {
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	t := time.NewTicker(h.r.cfg.ScrapeInterval)
	defer t.Stop()
	for {
		if st, _ := h.status(req.GetService()); st != last {
			if err := srv.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-srv.Context().Done():
			return nil
		case <-t.C:
		}
	}
}

// keyMatches reports whether an Authorization header carries the router's key, as the
// proxy's guard compares it.
func (r *Router) keyMatches(authorization string) bool {
	return subtle.ConstantTimeCompare([]byte(authorization), []byte("Bearer "+r.cfg.APIKey)) == 1
}
