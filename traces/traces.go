// Package traces reads request traces one row at a time (Azure LLM CSV, BurstGPT CSV,
// Mooncake JSONL and servelab's native JSONL), writes the native format, generates
// synthetic workloads and summarises traces. A trace never has to fit in memory.
//
// Every reader is strict in the same ways: token counts are integers (input at least 1,
// output at least 1, since vLLM generates at least one token), timestamps are finite and
// not negative, and arrivals never decrease. A reader streams, so it cannot sort: an
// out-of-order row is an error naming its line rather than a silently different
// workload. Errors are *Error values, "file:line: field "name": problem".
package traces

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Row is one request of a trace, as read.
type Row struct {
	// Arrival is seconds since the trace's first row.
	Arrival      float64
	InputTokens  int
	OutputTokens int
	// HashIDs are prefix block ids (Mooncake, native): equal ids at equal positions, after
	// equal ids before them, mean a shared prefix. Nil when the trace has none.
	HashIDs []int64
	// HashBlockSize is the tokens each hash id covers (512 in Mooncake traces; the last
	// block may be partial); 0 without hash ids.
	HashBlockSize int
	// Session groups the turns of a conversation (native); 0 for none.
	Session uint64
	// Priority is the request's scheduling priority (native); lower is served first, as
	// in vLLM's priority scheduling.
	Priority int
	// Model is the model the request called (BurstGPT: "ChatGPT" or "GPT-4"; native).
	Model string
	// Objective names the request's InferenceObjective (native): its class, whose
	// priority the cluster's objectives give (GIE's x-gateway-inference-objective).
	Objective string
	// FairnessID is the request's flow within its priority band (native; GIE's
	// x-gateway-inference-fairness-id).
	FairnessID string
	// TTFTSLOMs and TPOTSLOMs are the request's own latency objectives in milliseconds
	// (native slo_ttft_ms and slo_tpot_ms; 0: none, the experiment's slo applies), which the
	// SLO-aware router reads as llm-d's x-slo-ttft-ms and x-slo-tpot-ms headers.
	TTFTSLOMs, TPOTSLOMs float64
	// Line is the row's line in its file, for error messages (the row's index for
	// generated workloads).
	Line int
}

// Reader yields rows in nondecreasing order of arrival; Next returns io.EOF after the last.
type Reader interface {
	Next() (Row, error)
}

// Skipper is implemented by readers that leave out rows a trace marks as failed
// (BurstGPT's zero-token rows).
type Skipper interface {
	Skipped() int
}

// Format names a trace format.
type Format string

// The formats Open reads.
const (
	Azure    Format = "azure"
	Mooncake Format = "mooncake"
	BurstGPT Format = "burstgpt"
	Native   Format = "native"
)

// Formats lists the formats Open reads.
func Formats() []Format { return []Format{Azure, Mooncake, BurstGPT, Native} }

// Error locates a problem in a trace file.
type Error struct {
	File  string
	Line  int
	Field string // empty when the problem is not one field's
	Msg   string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: field %q: %s", e.File, e.Line, e.Field, e.Msg)
}

// Open opens a trace file; an empty format is detected from the file's first line. Close
// the returned Closer when done.
func Open(name string, format Format) (Reader, io.Closer, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	return openFile(f, name, format)
}

// OpenFS is Open for a file in fsys, such as an embedded trace.
func OpenFS(fsys fs.FS, name string, format Format) (Reader, io.Closer, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, nil, err
	}
	return openFile(f, name, format)
}

// openFile reads an opened file, closing it if it is not a trace.
func openFile(f io.ReadCloser, name string, format Format) (Reader, io.Closer, error) {
	r, err := open(f, name, format)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return r, f, nil
}

func open(f io.Reader, name string, format Format) (Reader, error) {
	br := bufio.NewReaderSize(f, 1<<16)
	if format == "" {
		head, err := br.Peek(4096)
		if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if format, err = detect(name, head); err != nil {
			return nil, err
		}
	}
	return NewReader(br, name, format)
}

// NewReader reads a trace of the given format from r; name appears in errors.
func NewReader(r io.Reader, name string, format Format) (Reader, error) {
	switch format {
	case Azure:
		return NewAzureReader(r, name), nil
	case Mooncake:
		return NewMooncakeReader(r, name), nil
	case BurstGPT:
		return NewBurstGPTReader(r, name), nil
	case Native:
		return NewNativeReader(r, name), nil
	}
	return nil, fmt.Errorf("%s: unknown trace format %q (want %s)", name, format, strings.Join(formatNames(), ", "))
}

// DetectFormat tells a trace file's format from its first line: the CSV header's column
// names, or the keys of the first JSON object. The content decides; the extension only
// shapes the advice when neither matches.
func DetectFormat(name string) (Format, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 4096)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return "", err
	}
	return detect(name, head[:n])
}

func detect(name string, head []byte) (Format, error) {
	head = bytes.TrimPrefix(head, []byte("\xef\xbb\xbf"))
	var first []byte
	for len(head) > 0 && len(first) == 0 {
		first, head, _ = bytes.Cut(head, []byte("\n"))
		first = bytes.TrimSpace(first)
	}
	has := func(s string) bool { return bytes.Contains(first, []byte(s)) }
	if bytes.HasPrefix(first, []byte("{")) {
		switch {
		case has(`"input_tokens"`) || has(`"arrival_s"`):
			return Native, nil
		case has(`"input_length"`) || has(`"hash_ids"`) || has(`"timestamp"`):
			return Mooncake, nil
		}
	} else {
		switch {
		case has("TIMESTAMP") && has("ContextTokens") && has("GeneratedTokens"):
			return Azure, nil
		case has("Request tokens") && has("Response tokens"):
			return BurstGPT, nil
		}
	}
	want := "a CSV header (Azure: TIMESTAMP,ContextTokens,GeneratedTokens; BurstGPT: Timestamp,Model,Request tokens,...) or a JSON line (Mooncake: timestamp, input_length; native: arrival_s, input_tokens)"
	switch strings.ToLower(path.Ext(filepath.ToSlash(name))) {
	case ".csv":
		want = "a CSV header: TIMESTAMP,ContextTokens,GeneratedTokens (Azure) or Timestamp,Model,Request tokens,Response tokens,... (BurstGPT)"
	case ".jsonl", ".json":
		want = `a JSON object with "timestamp", "input_length" (Mooncake) or "arrival_s", "input_tokens" (native)`
	}
	return "", fmt.Errorf("%s: cannot tell the trace format from its first line %q: want %s; or give --format (%s)",
		name, truncate(string(first), 80), want, strings.Join(formatNames(), ", "))
}

func formatNames() []string {
	var out []string
	for _, f := range Formats() {
		out = append(out, string(f))
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// displayName is the file name errors use.
func displayName(name string) string {
	if name == "" {
		return "trace"
	}
	return filepath.Clean(name)
}
