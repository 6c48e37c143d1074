package router

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
	"time"

	"servelab/serving"
)

// meter passes a proxied response through and notes what the router's metrics of it need:
// its status, when its body's first and last bytes were written, and, for a successful
// response, when its first token came and how many it had (read from the bytes as they
// pass, never buffering more than a line of a stream or the tail of a JSON body). The A/B
// test's metrics (ab.go) and the SLO counts (slo.go) both read it.
type meter struct {
	http.ResponseWriter
	req   *http.Request
	start time.Time
	code  int
	// first and last are when the body's first and last bytes were written.
	first, last time.Time
	// stream: the body is server-sent events (text/event-stream), known at its first byte.
	stream bool

	// A stream's state: the line being read (long when it grew over maxEventLine: skipped),
	// the first event carrying a token and the count of such events, the usage's
	// completion_tokens (-1 until one is read), whether "data: [DONE]" ended it and whether
	// an event was an error or not JSON.
	line       []byte
	long       bool
	firstToken time.Time
	events     int
	usage      int
	done, bad  bool

	// tail is a JSON body's last maxJSONTail bytes: its usage, which OpenAI and vLLM put
	// last.
	tail []byte
}

const (
	// maxEventLine bounds a stream's line: a token's chunk is a few hundred bytes.
	maxEventLine = 64 << 10
	// maxJSONTail bounds what is kept of a non-streamed body to find its usage in.
	maxJSONTail = 16 << 10
)

func newMeter(w http.ResponseWriter, req *http.Request) *meter {
	return &meter{ResponseWriter: w, req: req, start: time.Now(), usage: -1}
}

func (m *meter) WriteHeader(code int) {
	if m.code == 0 {
		m.code = code
	}
	m.ResponseWriter.WriteHeader(code)
}

func (m *meter) Write(p []byte) (int, error) {
	if m.code == 0 {
		m.code = http.StatusOK
	}
	if len(p) > 0 {
		now := time.Now()
		if m.first.IsZero() {
			m.first = now
			mt, _, _ := mime.ParseMediaType(m.Header().Get("Content-Type"))
			m.stream = mt == "text/event-stream"
		}
		m.last = now
		if m.ok() {
			if m.stream {
				m.scan(p, now)
			} else {
				m.keepTail(p)
			}
		}
	}
	return m.ResponseWriter.Write(p)
}

func (m *meter) Flush() {
	if f, ok := m.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (m *meter) Unwrap() http.ResponseWriter { return m.ResponseWriter }

// ok: the status is a success.
func (m *meter) ok() bool { return m.code >= 200 && m.code < 300 }

// scan reads the stream's events out of p, written at now.
func (m *meter) scan(p []byte, now time.Time) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		part := p
		if i >= 0 {
			part = p[:i]
		}
		if !m.long {
			if len(m.line)+len(part) > maxEventLine {
				m.long, m.line = true, m.line[:0]
			} else {
				m.line = append(m.line, part...)
			}
		}
		if i < 0 {
			return
		}
		if !m.long {
			m.event(bytes.TrimSuffix(m.line, []byte("\r")), now)
		}
		m.line, m.long = m.line[:0], false
		p = p[i+1:]
	}
}

// event reads one line of the stream; a chunk carries a token by serving.StreamChunk's
// rule, servelab bench's.
func (m *meter) event(line []byte, now time.Time) {
	data, done, ok := serving.SSEData(line)
	switch {
	case !ok:
		return
	case done:
		m.done = true
		return
	}
	var c serving.StreamChunk
	if err := json.Unmarshal(data, &c); err != nil || c.Error != nil {
		m.bad = true
		return
	}
	if c.CarriesToken() {
		if m.firstToken.IsZero() {
			m.firstToken = now
		}
		m.events++
	}
	if c.Usage != nil {
		m.usage = c.Usage.CompletionTokens
	}
}

// keepTail keeps the last maxJSONTail bytes of a JSON body.
func (m *meter) keepTail(p []byte) {
	if len(p) >= maxJSONTail {
		m.tail = append(m.tail[:0], p[len(p)-maxJSONTail:]...)
		return
	}
	if over := len(m.tail) + len(p) - maxJSONTail; over > 0 {
		m.tail = append(m.tail[:0], m.tail[over:]...)
	}
	m.tail = append(m.tail, p...)
}

// jsonUsage reads the completion_tokens of the usage object a JSON body ends with: the
// last "usage" key in its tail (a quote inside a string is escaped, so the key is one).
func jsonUsage(tail []byte) (int, bool) {
	i := bytes.LastIndex(tail, []byte(`"usage"`))
	if i < 0 {
		return 0, false
	}
	rest := bytes.TrimLeft(tail[i+len(`"usage"`):], " \t\r\n")
	rest, ok := bytes.CutPrefix(rest, []byte(":"))
	if !ok {
		return 0, false
	}
	var u *struct {
		CompletionTokens *int `json:"completion_tokens"`
	}
	if err := json.NewDecoder(bytes.NewReader(rest)).Decode(&u); err != nil || u == nil || u.CompletionTokens == nil {
		return 0, false
	}
	return *u.CompletionTokens, true
}

// record is the finished request as the simulator records one, its times in seconds from
// the router reading its body, and whether it failed: an error status or none (the client
// left first), a stream that did not end with [DONE] or had an error event, a JSON body
// without a readable usage (cut short). A stream's first token is its first chunk
// carrying one (its end when none did), its output tokens the usage's completion_tokens
// when the client asked for it (stream_options.include_usage), else the chunks carrying
// tokens; a JSON body's first token is its first byte, since the router sees the
// completion only whole.
func (m *meter) record() (rec serving.Record, failed bool) {
	if !m.ok() || m.first.IsZero() {
		return rec, true
	}
	at := func(t time.Time) float64 { return t.Sub(m.start).Seconds() }
	rec.Finish = at(m.last)
	if m.stream {
		if !m.done || m.bad {
			return rec, true
		}
		rec.FirstToken, rec.OutputTokens = rec.Finish, m.events
		if !m.firstToken.IsZero() {
			rec.FirstToken = at(m.firstToken)
		}
		if m.usage >= 0 {
			rec.OutputTokens = m.usage
		}
		return rec, false
	}
	n, ok := jsonUsage(m.tail)
	if !ok {
		return rec, true
	}
	rec.FirstToken, rec.OutputTokens = at(m.first), n
	return rec, false
}
