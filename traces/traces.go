// Package traces reads request traces one row at a time (Azure LLM CSV, BurstGPT CSV,
// Mooncake JSONL and servelab's native JSONL), writes the native format, and generates
// synthetic workloads. A trace never has to fit in memory.
package traces

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Row is one request of a trace.
type Row struct {
	// Arrival is seconds since the trace's first row.
	Arrival      float64
	InputTokens  int
	OutputTokens int
	// HashIDs are prefix block ids: equal ids at equal positions mean a shared prefix.
	HashIDs []int64
	// HashBlockSize is the tokens each hash id covers (512 in Mooncake traces).
	HashBlockSize int
	Session       uint64
	Priority      int
	// Line is the row's line in its file, for error messages.
	Line int
}

// Reader yields rows in order of arrival; Next returns io.EOF after the last one.
type Reader interface {
	Next() (Row, error)
}

// Format names a trace format.
type Format string

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
	Field string
	Msg   string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: field %q: %s", e.File, e.Line, e.Field, e.Msg)
}

// Open opens a trace file; an empty format is detected from the file.
func Open(path string, format Format) (Reader, io.Closer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(f, 1<<16)
	if format == "" {
		head, _ := br.Peek(4096)
		if format, err = detect(path, head); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	r, err := NewReader(br, path, format)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return r, f, nil
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
	return nil, fmt.Errorf("%s: unknown trace format %q (want azure, mooncake, burstgpt or native)", name, format)
}

// DetectFormat guesses a trace file's format from its first line.
func DetectFormat(path string) (Format, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 4096)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", err
	}
	return detect(path, head[:n])
}

func detect(path string, head []byte) (Format, error) {
	first, _, _ := bytes.Cut(head, []byte("\n"))
	first = bytes.TrimSpace(bytes.TrimPrefix(first, []byte("\xef\xbb\xbf")))
	switch {
	case bytes.HasPrefix(first, []byte("{")):
		if bytes.Contains(first, []byte(`"input_length"`)) {
			return Mooncake, nil
		}
		if bytes.Contains(first, []byte(`"input_tokens"`)) {
			return Native, nil
		}
	case bytes.HasPrefix(first, []byte("TIMESTAMP,")):
		return Azure, nil
	case bytes.Contains(first, []byte("Request tokens")):
		return BurstGPT, nil
	}
	return "", fmt.Errorf("%s: cannot tell the trace format from its first line %q; give --format (%s)",
		path, truncate(string(first), 80), strings.Join(formatNames(), ", "))
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

// base names a file in errors without its directory noise.
func base(name string) string {
	if name == "" {
		return "trace"
	}
	return filepath.Clean(name)
}
