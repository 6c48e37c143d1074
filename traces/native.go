package traces

import (
	"bufio"
	"encoding/json"
	"io"
	"strconv"
)

// nativeFields is one native row as read, before validation.
type nativeFields struct {
	arrival, in, out          float64
	hasArrival, hasIn, hasOut bool
	ids                       []int64
	blockSize                 int64
	session                   uint64
	priority                  int64
	sloTTFT, sloTPOT          float64
	model                     []byte
	modelString               string // set instead of model by the encoding/json path
	// objective and fairness are the InferenceObjective name and the flow's fairness id
	// (x-gateway-inference-objective, x-gateway-inference-fairness-id); the *String forms
	// are set instead by the encoding/json path.
	objective, fairness             []byte
	objectiveString, fairnessString string
}

// nativeReader reads servelab's own trace format.
type nativeReader struct {
	lines   *lineReader
	order   order
	slab    idSlab
	scratch []int64
	model   string
	// objective and fairness intern their columns as model does.
	objective, fairness string
}

// NewNativeReader reads servelab's JSONL format, one object a line:
//
//	{"arrival_s":0.5,"input_tokens":812,"output_tokens":96,"hash_ids":[7,8],"hash_block_size":16,"session_id":3,"priority":1,"model":"m","objective":"critical","fairness_id":"tenant-a","slo_ttft_ms":500,"slo_tpot_ms":50}
//
// arrival_s (seconds, nondecreasing; rows are returned relative to the first), input_tokens and output_tokens (integers, at least
// 1) are required; hash_ids with hash_block_size, session_id, priority, model, objective,
// fairness_id, slo_ttft_ms and slo_tpot_ms are optional (hash_block_size without hash_ids
// is ignored). priority is vLLM's request field (lower runs first); objective names the
// request's InferenceObjective (the class it is reported under, whose priority the cluster's
// objectives give, GIE's x-gateway-inference-objective) and fairness_id its flow (tenant)
// within that priority (x-gateway-inference-fairness-id); slo_ttft_ms and slo_tpot_ms are
// the request's latency objectives (milliseconds, as llm-d's x-slo-ttft-ms and
// x-slo-tpot-ms headers). A field it does not know is an
// error, so a misspelt field is never ignored.
func NewNativeReader(r io.Reader, name string) Reader {
	return &nativeReader{lines: newLineReader(r, name)}
}

func (n *nativeReader) Next() (Row, error) {
	line, err := n.lines.next()
	if err != nil {
		return Row{}, err
	}
	f := nativeFields{ids: n.scratch[:0]}
	if !parseNativeFast(line, &f) {
		if f, err = n.decode(line); err != nil {
			return Row{}, err
		}
	}
	n.scratch = f.ids[:0]
	l := n.lines
	if err := l.seconds("arrival_s", f.arrival, f.hasArrival, "seconds"); err != nil {
		return Row{}, err
	}
	if err := n.order.check(l, "arrival_s", f.arrival, "s"); err != nil {
		return Row{}, err
	}
	in, err := l.jsonCount("input_tokens", f.in, f.hasIn, 1)
	if err != nil {
		return Row{}, err
	}
	out, err := l.jsonCount("output_tokens", f.out, f.hasOut, 1)
	if err != nil {
		return Row{}, err
	}
	switch {
	case f.blockSize < 0 || f.blockSize > maxCount:
		return Row{}, l.errorf("hash_block_size", "%d is out of range (1 to %d)", f.blockSize, maxCount)
	case len(f.ids) > 0 && f.blockSize == 0:
		return Row{}, l.errorf("hash_block_size", "missing: hash_ids need the tokens each id covers")
	case len(f.ids) > 0 && int64(len(f.ids)-1)*f.blockSize >= int64(in):
		return Row{}, l.errorf("hash_ids", "%d ids of %d tokens for %d input tokens", len(f.ids), f.blockSize, in)
	}
	if len(f.ids) == 0 {
		f.blockSize = 0
	}
	for _, o := range []struct {
		key string
		v   float64
	}{{"slo_ttft_ms", f.sloTTFT}, {"slo_tpot_ms", f.sloTPOT}} {
		if !(o.v >= 0) || o.v > 1e12 {
			return Row{}, l.errorf(o.key, "%v is not a non-negative number of milliseconds", o.v)
		}
	}
	model := f.modelString
	if f.model != nil {
		model = interned(&n.model, f.model)
	}
	objective, fairness := f.objectiveString, f.fairnessString
	if f.objective != nil {
		objective = interned(&n.objective, f.objective)
	}
	if f.fairness != nil {
		fairness = interned(&n.fairness, f.fairness)
	}
	return Row{
		Arrival: n.order.since(f.arrival), InputTokens: in, OutputTokens: out,
		HashIDs: n.slab.copy(f.ids), HashBlockSize: int(f.blockSize),
		Session: f.session, Priority: int(f.priority), Model: model, Line: l.line,
		Objective: objective, FairnessID: fairness,
		TTFTSLOMs: f.sloTTFT, TPOTSLOMs: f.sloTPOT,
	}, nil
}

// parseNativeFast reads a row the way NativeWriter writes it; false leaves it to
// encoding/json, which accepts every valid row and explains every invalid one.
func parseNativeFast(line []byte, f *nativeFields) bool {
	p := objScanner{b: line}
	for p.next() {
		ok := false
		switch string(p.key) {
		case "arrival_s":
			f.arrival, ok = p.float()
			f.hasArrival = true
		case "input_tokens":
			f.in, ok = p.float()
			f.hasIn = true
		case "output_tokens":
			f.out, ok = p.float()
			f.hasOut = true
		case "hash_ids":
			f.ids, ok = p.ints(f.ids[:0])
		case "hash_block_size":
			f.blockSize, ok = p.int()
		case "session_id":
			var v int64
			v, ok = p.int()
			f.session, ok = uint64(v), ok && v >= 0
		case "priority":
			f.priority, ok = p.int()
		case "model":
			f.model, ok = p.str()
		case "objective":
			f.objective, ok = p.str()
		case "fairness_id":
			f.fairness, ok = p.str()
		case "slo_ttft_ms":
			f.sloTTFT, ok = p.float()
		case "slo_tpot_ms":
			f.sloTPOT, ok = p.float()
		}
		if !ok {
			return false
		}
	}
	return p.ok()
}

// nativeJSON is the encoding/json view of a native row.
type nativeJSON struct {
	ArrivalS      *float64 `json:"arrival_s"`
	InputTokens   *float64 `json:"input_tokens"`
	OutputTokens  *float64 `json:"output_tokens"`
	HashIDs       []int64  `json:"hash_ids"`
	HashBlockSize int64    `json:"hash_block_size"`
	SessionID     uint64   `json:"session_id"`
	Priority      int64    `json:"priority"`
	Model         string   `json:"model"`
	Objective     string   `json:"objective"`
	FairnessID    string   `json:"fairness_id"`
	SLOTTFTMs     float64  `json:"slo_ttft_ms"`
	SLOTPOTMs     float64  `json:"slo_tpot_ms"`
}

func (n *nativeReader) decode(line []byte) (nativeFields, error) {
	var raw nativeJSON
	if err := decodeLine(n.lines, line, &raw, true); err != nil {
		return nativeFields{}, err
	}
	f := nativeFields{ids: raw.HashIDs, blockSize: raw.HashBlockSize, session: raw.SessionID, priority: raw.Priority, modelString: raw.Model,
		objectiveString: raw.Objective, fairnessString: raw.FairnessID,
		sloTTFT: raw.SLOTTFTMs, sloTPOT: raw.SLOTPOTMs}
	f.arrival, f.hasArrival = deref(raw.ArrivalS)
	f.in, f.hasIn = deref(raw.InputTokens)
	f.out, f.hasOut = deref(raw.OutputTokens)
	return f, nil
}

// NativeWriter writes rows in servelab's JSONL format (see NewNativeReader), leaving out
// optional fields that are zero. Arrivals are written in the shortest form that reads
// back to the same float64.
type NativeWriter struct {
	w   *bufio.Writer
	buf []byte
}

// NewNativeWriter writes to w; call Flush at the end.
func NewNativeWriter(w io.Writer) *NativeWriter {
	return &NativeWriter{w: bufio.NewWriterSize(w, 1<<16)}
}

// Write writes one row.
func (n *NativeWriter) Write(r Row) error {
	b := n.buf[:0]
	b = append(b, `{"arrival_s":`...)
	b = strconv.AppendFloat(b, r.Arrival, 'f', -1, 64)
	b = append(b, `,"input_tokens":`...)
	b = strconv.AppendInt(b, int64(r.InputTokens), 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, int64(r.OutputTokens), 10)
	if len(r.HashIDs) > 0 {
		b = append(b, `,"hash_ids":[`...)
		for i, h := range r.HashIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, h, 10)
		}
		b = append(b, `],"hash_block_size":`...)
		b = strconv.AppendInt(b, int64(r.HashBlockSize), 10)
	}
	if r.Session != 0 {
		b = append(b, `,"session_id":`...)
		b = strconv.AppendUint(b, r.Session, 10)
	}
	if r.Priority != 0 {
		b = append(b, `,"priority":`...)
		b = strconv.AppendInt(b, int64(r.Priority), 10)
	}
	if r.Model != "" {
		b = append(b, `,"model":`...)
		b = appendJSONString(b, r.Model)
	}
	if r.Objective != "" {
		b = append(b, `,"objective":`...)
		b = appendJSONString(b, r.Objective)
	}
	if r.FairnessID != "" {
		b = append(b, `,"fairness_id":`...)
		b = appendJSONString(b, r.FairnessID)
	}
	if r.TTFTSLOMs != 0 {
		b = append(b, `,"slo_ttft_ms":`...)
		b = strconv.AppendFloat(b, r.TTFTSLOMs, 'f', -1, 64)
	}
	if r.TPOTSLOMs != 0 {
		b = append(b, `,"slo_tpot_ms":`...)
		b = strconv.AppendFloat(b, r.TPOTSLOMs, 'f', -1, 64)
	}
	b = append(b, "}\n"...)
	n.buf = b
	_, err := n.w.Write(b)
	return err
}

// Flush writes out buffered rows.
func (n *NativeWriter) Flush() error { return n.w.Flush() }

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
