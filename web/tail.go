package web

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"

	"servelab/experiments"
)

// errTruncated says the followed file shrank: it was replaced, and must be read again from
// the start.
var errTruncated = errors.New("events file truncated")

// tail reads the events appended to an events.jsonl since its last read. A line not yet
// complete (the writer flushes every 100 ms, not at line ends) waits for the next read.
type tail struct {
	path    string
	off     int64  // bytes consumed, the partial line included
	partial []byte // the incomplete last line
	bad     int    // lines that did not decode
}

func newTail(path string) *tail { return &tail{path: path} }

func (t *tail) rewind() { t.off, t.partial, t.bad = 0, nil, 0 }

// skipToEnd makes the next read start at the file's current end.
func (t *tail) skipToEnd() {
	t.partial = nil
	if st, err := os.Stat(t.path); err == nil {
		t.off = st.Size()
	}
}

// read applies every complete new event in order. A missing file has no events yet.
func (t *tail) read(apply func(experiments.Event)) error {
	f, err := os.Open(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	switch {
	case size < t.off:
		return errTruncated
	case size == t.off:
		return nil
	}
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return err
	}
	r := bufio.NewReaderSize(io.LimitReader(f, size-t.off), 64<<10)
	for {
		chunk, err := r.ReadSlice('\n')
		t.off += int64(len(chunk))
		if err == bufio.ErrBufferFull {
			t.partial = append(t.partial, chunk...)
			continue
		}
		if err != nil { // io.EOF: an incomplete line, kept for the next read
			t.partial = append(t.partial, chunk...)
			return nil
		}
		line := chunk
		if len(t.partial) > 0 {
			line = append(t.partial, chunk...)
		}
		t.decode(line, apply)
		t.partial = t.partial[:0]
	}
}

func (t *tail) decode(line []byte, apply func(experiments.Event)) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	var ev experiments.Event
	if err := json.Unmarshal(line, &ev); err != nil || ev.Kind == "" {
		t.bad++
		return
	}
	apply(ev)
}
