package experiments

import (
	"os"

	"github.com/parquet-go/parquet-go"

	"servelab/serving"
)

// RecordRow is one request in records.parquet: serving.Record's fields under their JSON
// names, plus the latencies derived from them, so pandas or polars can read the file and
// plot without recomputing.
type RecordRow struct {
	ID           uint64  `parquet:"id"`
	Instance     int32   `parquet:"instance"`
	Arrival      float64 `parquet:"arrival_s"`
	Scheduled    float64 `parquet:"scheduled_s"`
	FirstToken   float64 `parquet:"first_token_s"`
	Finish       float64 `parquet:"finish_s"`
	PromptTokens int32   `parquet:"prompt_tokens"`
	CachedTokens int32   `parquet:"cached_tokens"`
	OutputTokens int32   `parquet:"output_tokens"`
	Preemptions  int32   `parquet:"preemptions"`
	Failed       bool    `parquet:"failed"`
	Error        string  `parquet:"error"`
	// TTFTMs, TPOTMs (0 for a single output token) and E2ELMs, as vLLM's benchmark defines them.
	TTFTMs float64 `parquet:"ttft_ms"`
	TPOTMs float64 `parquet:"tpot_ms"`
	E2ELMs float64 `parquet:"e2el_ms"`
	// PrefillInstance is the instance that ran a disaggregated request's prefill (-1: the
	// request was not disaggregated), and KVTransferS how long its KV took to the decode
	// instance (serving.Record's prefill_instance and kv_transfer_s).
	PrefillInstance int32   `parquet:"prefill_instance"`
	KVTransferS     float64 `parquet:"kv_transfer_s"`
	// Objective is the request's class (serving.Record's objective; "" for none).
	Objective string `parquet:"objective"`
}

func rowOf(r *serving.Record) RecordRow {
	row := RecordRow{
		ID: r.ID, Instance: int32(r.Instance), Arrival: r.Arrival, Scheduled: r.Scheduled,
		FirstToken: r.FirstToken, Finish: r.Finish, PromptTokens: int32(r.PromptTokens),
		CachedTokens: int32(r.CachedTokens), OutputTokens: int32(r.OutputTokens),
		Preemptions: int32(r.Preemptions), Failed: r.Failed, Error: r.Error,
		PrefillInstance: -1, KVTransferS: r.KVTransfer, Objective: r.Objective,
	}
	if r.PrefillInstance != nil {
		row.PrefillInstance = int32(*r.PrefillInstance)
	}
	if !r.Failed {
		row.TTFTMs, row.E2ELMs = 1000*r.TTFT(), 1000*r.E2E()
		if tpot, ok := r.TPOT(); ok {
			row.TPOTMs = 1000 * tpot
		}
	}
	return row
}

// recordFile streams records into a Parquet file, written under a temporary name and
// renamed when complete.
type recordFile struct {
	path string
	file *os.File
	w    *parquet.GenericWriter[RecordRow]
	buf  []RecordRow
}

func newRecordFile(path string) (*recordFile, error) {
	file, err := os.Create(path + ".partial")
	if err != nil {
		return nil, err
	}
	return &recordFile{path: path, file: file, w: parquet.NewGenericWriter[RecordRow](file, parquet.Compression(&parquet.Zstd))}, nil
}

func (f *recordFile) write(r *serving.Record) error {
	f.buf = append(f.buf, rowOf(r))
	if len(f.buf) >= 4096 {
		return f.flush()
	}
	return nil
}

func (f *recordFile) flush() error {
	_, err := f.w.Write(f.buf)
	f.buf = f.buf[:0]
	return err
}

func (f *recordFile) close() error {
	err := f.flush()
	if cerr := f.w.Close(); err == nil {
		err = cerr
	}
	if cerr := f.file.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.path+".partial", f.path)
	}
	f.file = nil
	return err
}

// abort removes a file that was not closed.
func (f *recordFile) abort() {
	if f.file != nil {
		f.file.Close()
		os.Remove(f.path + ".partial")
	}
}

// ReadRecords reads a cell's records.parquet.
func ReadRecords(dir, cellID string) ([]RecordRow, error) {
	return parquet.ReadFile[RecordRow](cellDir(dir, cellID) + "/records.parquet")
}
