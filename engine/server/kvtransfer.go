package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/engine"
)

// Prefill/decode disaggregation over HTTP, after vLLM's NixlConnector as llm-d's routing
// sidecar drives it (vllm/distributed/kv_transfer/kv_connector/v1/nixl_connector.py;
// llm-d-inference-scheduler pkg/sidecar/proxy/connector_nixlv2.go), with vLLM's
// kv_transfer_params names:
//
//   - A request with "kv_transfer_params": {"do_remote_decode": true, ...} (to a prefill or
//     both engine; stream must be false) runs as usual, and when it finishes at its
//     max_tokens its prompt's full KV blocks stay held; the response carries
//     "kv_transfer_params": {"do_remote_prefill": true, "do_remote_decode": false,
//     "remote_engine_id", "remote_request_id", "remote_block_ids", "remote_host",
//     "remote_port", "tp_size": 1}. (A request that stopped before max_tokens holds nothing
//     and carries null, as vLLM's request_finished.)
//   - A request carrying that object (to a decode or both engine) pulls the blocks from
//     POST http://remote_host:remote_port/v1/kv_transfer/pull, with the body
//     {"remote_engine_id", "remote_request_id", "remote_block_ids"}; the answer is
//     application/octet-stream, the blocks in order, each engine.KVBlockIO.BlockBytes long.
//     The prefill engine answers 404 for another engine id or a request it holds nothing
//     for, 409 for other block ids or a pull already under way, and frees the blocks when the
//     body is written (or the pull failed). The decode engine then computes the prompt's
//     remaining tokens (at least the last one) and continues. If the pull fails the decode
//     engine answers 503 with the header x-servelab-retry: kv-pull, so a router retries the
//     whole flow (prefill and decode) elsewhere.

// KVTransferConfig configures a server's part in disaggregation.
type KVTransferConfig struct {
	// Role is "both" (the default: either kind of request), "prefill" (refuses
	// do_remote_prefill) or "decode" (refuses do_remote_decode); vLLM's kv_role
	// kv_both / kv_producer / kv_consumer.
	Role string
	// EngineID is remote_engine_id in the prefill responses; default a random id per
	// process.
	EngineID string
	// Host and Port are remote_host and remote_port in the prefill responses: where the
	// pull endpoint is reached; by default the address the prefill request arrived on.
	Host string
	Port int
	// AllowHosts are remote_host values a decode request may name besides loopback
	// addresses and "localhost" (--kv-transfer-allow-host).
	AllowHosts []string
	// PullTimeout bounds one pull, connection to last byte (default DefaultKVPullTimeout).
	PullTimeout time.Duration
	// Client makes the pulls (default: a client with no overall timeout of its own).
	Client *http.Client
	// PauseAfterBlocks is a test hook: a pull writes this many blocks, flushes them, calls
	// OnPause and then waits until its client goes away, so tests can fail a transfer
	// midway deterministically. 0 disables it.
	PauseAfterBlocks int
	OnPause          func(requestID string, sent, total int)
}

// kvMetrics are a decode engine's pull measurements.
type kvMetrics struct {
	pullSeconds  prometheus.Histogram
	pulledBlocks prometheus.Counter
	failed       prometheus.Counter
}

func newKVMetrics(reg prometheus.Registerer, model string) *kvMetrics {
	labels := prometheus.Labels{"model_name": model}
	m := &kvMetrics{
		pullSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "servelab:kv_transfer_pull_seconds",
			Help:    "Time a decode engine took to pull one request's KV blocks from its prefill engine and write them into its cache.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 20), ConstLabels: labels}),
		pulledBlocks: prometheus.NewCounter(prometheus.CounterOpts{Name: "servelab:kv_transfer_pulled_blocks_total",
			Help: "KV blocks pulled from prefill engines.", ConstLabels: labels}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "servelab:kv_transfer_pull_failures_total",
			Help: "KV pulls that failed (the request was answered 503 with x-servelab-retry: kv-pull).", ConstLabels: labels}),
	}
	for _, c := range []prometheus.Collector{m.pullSeconds, m.pulledBlocks, m.failed} {
		reg.Register(c) // a registry shared by several servers keeps the first
	}
	return m
}

// DefaultKVPullTimeout bounds a decode engine's pull of a request's KV blocks.
const DefaultKVPullTimeout = 60 * time.Second

// RetryHeader is set, with value "kv-pull", on the 503 of a decode request whose KV could
// not be pulled: the router retries the whole prefill and decode flow.
const RetryHeader = "x-servelab-retry"

const (
	rolePrefill = "prefill"
	roleDecode  = "decode"
	roleBoth    = "both"
)

// maxKVStringBytes bounds kv_transfer_params' string fields.
const maxKVStringBytes = 256

func (c *KVTransferConfig) resolve() error {
	switch c.Role {
	case "":
		c.Role = roleBoth
	case rolePrefill, roleDecode, roleBoth:
	default:
		return fmt.Errorf("server: KV transfer role %q: want prefill, decode or both", c.Role)
	}
	if c.EngineID == "" {
		var b [8]byte
		rand.Read(b[:])
		c.EngineID = "servelab-" + hex.EncodeToString(b[:])
	}
	if c.PullTimeout <= 0 {
		c.PullTimeout = DefaultKVPullTimeout
	}
	if c.Client == nil {
		c.Client = &http.Client{}
	}
	return nil
}

// kvParams is a request's kv_transfer_params, or a pull's body.
type kvParams struct {
	doRemoteDecode, doRemotePrefill bool
	engineID, requestID, host       string
	blockIDs                        []int32
	hasBlockIDs                     bool
	port                            int
}

// parseKVParams reads kv_transfer_params (or a pull body) from raw: an object whose known
// fields must have the right type and range; unknown fields are skipped. At most maxBlocks
// block ids are read: more is refused before they are stored. Errors name the field.
func parseKVParams(raw []byte, field string, maxBlocks int) (*kvParams, *apiError) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	bad := func(key, format string, args ...any) (*kvParams, *apiError) {
		name := field
		if key != "" {
			name += "." + key
		}
		return nil, badRequest(name, "%s: %s", name, fmt.Sprintf(format, args...))
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return bad("", "expected an object")
	}
	p := &kvParams{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return bad("", "malformed: %v", err)
		}
		key, _ := t.(string)
		str := func(dst *string) *apiError {
			v, err := dec.Token()
			switch s, ok := v.(string); {
			case err != nil:
				return badRequest(field+"."+key, "%s.%s: malformed: %v", field, key, err)
			case v == nil:
			case !ok:
				return badRequest(field+"."+key, "%s.%s: expected a string or null", field, key)
			case len(s) > maxKVStringBytes:
				return badRequest(field+"."+key, "%s.%s: %d bytes long; at most %d are allowed", field, key, len(s), maxKVStringBytes)
			default:
				*dst = s
			}
			return nil
		}
		integer := func(lo, hi int64) (int64, bool, *apiError) {
			v, err := dec.Token()
			if err != nil {
				return 0, false, badRequest(field+"."+key, "%s.%s: malformed: %v", field, key, err)
			}
			if v == nil {
				return 0, false, nil
			}
			n, ok := v.(json.Number)
			i, err := n.Int64()
			if !ok || err != nil || i < lo || i > hi {
				return 0, false, badRequest(field+"."+key, "%s.%s: expected an integer in [%d, %d], got %v", field, key, lo, hi, v)
			}
			return i, true, nil
		}
		var e *apiError
		switch key {
		case "do_remote_decode", "do_remote_prefill":
			v, err := dec.Token()
			b, ok := v.(bool)
			if err != nil || !ok && v != nil {
				return bad(key, "expected a boolean or null")
			}
			if key == "do_remote_decode" {
				p.doRemoteDecode = b
			} else {
				p.doRemotePrefill = b
			}
		case "remote_engine_id":
			e = str(&p.engineID)
		case "remote_request_id":
			e = str(&p.requestID)
		case "remote_host":
			e = str(&p.host)
		case "remote_port":
			var port int64
			port, _, e = integer(1, 65535)
			p.port = int(port)
		case "tp_size":
			var n int64
			var set bool
			if n, set, e = integer(1, math.MaxInt32); e == nil && set && n != 1 {
				return bad(key, "only tp_size 1 is supported, got %d", n)
			}
		case "remote_block_ids":
			v, err := dec.Token()
			if err != nil {
				return bad(key, "malformed: %v", err)
			}
			if v == nil {
				break
			}
			if v != json.Delim('[') {
				return bad(key, "expected a list of block ids")
			}
			p.hasBlockIDs = true
			p.blockIDs = []int32{}
			for dec.More() {
				if len(p.blockIDs) == maxBlocks {
					return bad(key, "more than %d block ids (a prompt that fits the context fills at most %d blocks)", maxBlocks, maxBlocks)
				}
				v, err := dec.Token()
				n, ok := v.(json.Number)
				id, nerr := n.Int64()
				if err != nil || !ok || nerr != nil || id < 0 || id > math.MaxInt32 {
					return bad(key, "element %d: expected a block id (an integer in [0, %d]), got %v", len(p.blockIDs), math.MaxInt32, v)
				}
				p.blockIDs = append(p.blockIDs, int32(id))
			}
			if _, err := dec.Token(); err != nil {
				return bad(key, "malformed: %v", err)
			}
		default:
			e = skipValue(dec, field+"."+key)
		}
		if e != nil {
			return nil, e
		}
	}
	return p, nil
}

// skipValue reads past one JSON value without keeping it.
func skipValue(dec *json.Decoder, name string) *apiError {
	depth := 0
	for {
		t, err := dec.Token()
		if err != nil {
			return badRequest(name, "%s: malformed: %v", name, err)
		}
		switch t {
		case json.Delim('['), json.Delim('{'):
			depth++
		case json.Delim(']'), json.Delim('}'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// kvTransferOut is the kv_transfer_params of a prefill response.
type kvTransferOut struct {
	DoRemotePrefill bool    `json:"do_remote_prefill"`
	DoRemoteDecode  bool    `json:"do_remote_decode"`
	RemoteEngineID  string  `json:"remote_engine_id"`
	RemoteRequestID string  `json:"remote_request_id"`
	RemoteBlockIDs  []int32 `json:"remote_block_ids"`
	RemoteHost      string  `json:"remote_host"`
	RemotePort      int     `json:"remote_port"`
	TPSize          int     `json:"tp_size"`
}

// kvOut is the kv_transfer_params answering r, whose request left h. Without a configured
// Host or Port it advertises the address r arrived on.
func (s *Server) kvOut(r *http.Request, h *engine.HeldKV) *kvTransferOut {
	if h == nil {
		return nil
	}
	ids := h.Blocks
	if ids == nil {
		ids = []int32{}
	}
	c := &s.cfg.KVTransfer
	host, port := c.Host, c.Port
	if ta, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		if host == "" {
			host = ta.IP.String()
		}
		if port == 0 {
			port = ta.Port
		}
	}
	return &kvTransferOut{DoRemotePrefill: true, RemoteEngineID: c.EngineID, RemoteRequestID: h.RequestID,
		RemoteBlockIDs: ids, RemoteHost: host, RemotePort: port, TPSize: 1}
}

// maxKVBlocks is the most full blocks a prompt that fits the context fills.
func (s *Server) maxKVBlocks() int {
	return s.cfg.MaxModelLen / s.cfg.Engine.Config().BlockSize
}

// applyKVTransfer validates a request's kv_transfer_params and sets the engine request's
// disaggregation fields. stream is the request's stream flag.
func (s *Server) applyKVTransfer(raw json.RawMessage, stream bool, req *engine.Request) *apiError {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	p, e := parseKVParams(raw, "kv_transfer_params", s.maxKVBlocks())
	if e != nil {
		return e
	}
	role := s.cfg.KVTransfer.Role
	switch {
	case p.doRemoteDecode && p.doRemotePrefill:
		return badRequest("kv_transfer_params", "kv_transfer_params: do_remote_decode and do_remote_prefill cannot both be true")
	case p.doRemoteDecode && role == roleDecode:
		return badRequest("kv_transfer_params.do_remote_decode", "kv_transfer_params.do_remote_decode: this engine's role is decode (--role); send the prefill to a prefill or both engine")
	case p.doRemoteDecode && stream:
		return badRequest("stream", "stream must be false with kv_transfer_params.do_remote_decode: the response carries the KV's whereabouts")
	case p.doRemoteDecode:
		req.RemoteDecode = true
		return nil
	case !p.doRemotePrefill:
		return nil // asks for nothing
	case role == rolePrefill:
		return badRequest("kv_transfer_params.do_remote_prefill", "kv_transfer_params.do_remote_prefill: this engine's role is prefill (--role); send the decode to a decode or both engine")
	}
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"remote_engine_id", p.engineID != ""}, {"remote_request_id", p.requestID != ""},
		{"remote_block_ids", p.hasBlockIDs}, {"remote_host", p.host != ""}, {"remote_port", p.port != 0},
	} {
		if !f.ok {
			return badRequest("kv_transfer_params."+f.name, "kv_transfer_params.%s is required with do_remote_prefill", f.name)
		}
	}
	if !s.hostAllowed(p.host) {
		return badRequest("kv_transfer_params.remote_host", "kv_transfer_params.remote_host %q is not a loopback address and not allowed by --kv-transfer-allow-host", p.host)
	}
	req.RemotePrefill = &engine.RemotePrefill{Blocks: len(p.blockIDs), Fetch: s.fetcher(p)}
	return nil
}

func (s *Server) hostAllowed(host string) bool {
	if host == "localhost" || slices.Contains(s.cfg.KVTransfer.AllowHosts, host) {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// fetcher pulls p's blocks from the prefill engine.
func (s *Server) fetcher(p *kvParams) func(context.Context, int, func(int, []byte) error) error {
	c := &s.cfg.KVTransfer
	url := "http://" + net.JoinHostPort(p.host, strconv.Itoa(p.port)) + "/v1/kv_transfer/pull"
	body, _ := json.Marshal(struct {
		EngineID  string  `json:"remote_engine_id"`
		RequestID string  `json:"remote_request_id"`
		BlockIDs  []int32 `json:"remote_block_ids"`
	}{p.engineID, p.requestID, p.blockIDs})
	n := len(p.blockIDs)
	return func(parent context.Context, blockBytes int, put func(int, []byte) error) (err error) {
		start := time.Now()
		defer func() {
			switch {
			case err == nil:
				s.kvm.pullSeconds.Observe(time.Since(start).Seconds())
				s.kvm.pulledBlocks.Add(float64(n))
			case parent.Err() == nil: // not an abort
				s.kvm.failed.Inc()
			}
		}()
		ctx, cancel := context.WithTimeout(parent, c.PullTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		if s.cfg.APIKey != "" {
			req.Header.Set("Authorization", "Bearer "+s.cfg.APIKey)
		}
		resp, err := c.Client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return fmt.Errorf("%s answered %s: %s", url, resp.Status, bytes.TrimSpace(msg))
		}
		if want := int64(n) * int64(blockBytes); resp.ContentLength >= 0 && resp.ContentLength != want {
			return fmt.Errorf("%s sends %d bytes for %d blocks of %d bytes", url, resp.ContentLength, n, blockBytes)
		}
		buf := make([]byte, blockBytes)
		for i := range n {
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				return fmt.Errorf("reading block %d of %d from %s: %w", i+1, n, url, err)
			}
			if err := put(i, buf); err != nil {
				return err
			}
		}
		return nil
	}
}

// kvPull is POST /v1/kv_transfer/pull: a decode engine reads the blocks a finished
// do_remote_decode request holds.
func (s *Server) kvPull(w http.ResponseWriter, r *http.Request) {
	body, e := s.readBody(w, r)
	if e != nil {
		writeError(w, e)
		return
	}
	p, e := parseKVParams(body, "body", s.maxKVBlocks())
	if e != nil {
		writeError(w, e)
		return
	}
	c := &s.cfg.KVTransfer
	if p.engineID != c.EngineID {
		writeError(w, &apiError{status: http.StatusNotFound, Type: "NotFoundError", Param: "remote_engine_id",
			Msg: fmt.Sprintf("remote_engine_id %q is not this engine's (%q)", p.engineID, c.EngineID)})
		return
	}
	claim, err := s.cfg.Engine.ClaimKV(p.requestID, p.blockIDs)
	if err != nil {
		e := &apiError{status: http.StatusConflict, Type: "ConflictError", Param: "remote_block_ids",
			Msg: fmt.Sprintf("remote_request_id %q: %v", p.requestID, err)}
		switch {
		case errors.Is(err, engine.ErrKVNotHeld):
			e.status, e.Type, e.Param = http.StatusNotFound, "NotFoundError", "remote_request_id"
			e.Msg += " (pulled already, never held, or freed after --kv-transfer-timeout)"
		case errors.Is(err, engine.ErrKVClaimed):
			e.Param = "remote_request_id"
		case errors.Is(err, engine.ErrKVTransferUnsupported):
			e.status, e.Type, e.Param = http.StatusNotImplemented, "NotImplementedError", nil
		}
		writeError(w, e)
		return
	}
	// The blocks are freed when the body is written, or when the pull failed: the decode
	// side then retries the whole flow.
	defer claim.Release()
	size := claim.BlockBytes()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(int64(claim.Len())*int64(size), 10))
	w.WriteHeader(http.StatusOK)
	buf := make([]byte, size)
	for i := range claim.Len() {
		claim.Read(i, buf)
		if _, err := w.Write(buf); err != nil {
			return
		}
		if c.PauseAfterBlocks > 0 && i+1 == c.PauseAfterBlocks && i+1 < claim.Len() {
			http.NewResponseController(w).Flush()
			if c.OnPause != nil {
				c.OnPause(p.requestID, i+1, claim.Len())
			}
			<-r.Context().Done()
			return
		}
	}
}

// kvError answers a decode request whose KV could not be pulled.
func kvPullFailed(w http.ResponseWriter, err error) {
	w.Header().Set(RetryHeader, "kv-pull")
	writeError(w, &apiError{status: http.StatusServiceUnavailable, Type: "ServiceUnavailableError", Msg: err.Error()})
}
