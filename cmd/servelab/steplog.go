package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"servelab/sim/latency"
)

// stepLogRecord is one line of `servelab engine --step-log`: a latency.Sample (the step's
// shape and wall time, all that profile --from-steps and the calibration fit read) and,
// for fidelity --explain, when the engine reported the step and its state after it. The
// extra fields are optional: logs written before them read with zeros.
type stepLogRecord struct {
	latency.Sample
	// EndUnixNs is the wall clock when the engine reported the step, just after it ended,
	// in Unix nanoseconds (the load generator's clock on the same machine).
	EndUnixNs int64 `json:"end_unix_ns,omitempty"`
	// Running and Waiting (vllm:num_requests_running / _waiting) and KVBlocksUsed (the
	// blocks requests reference: kv_cache_usage_perc times the blocks) are the engine
	// after the step, as the simulator's sim.StepInfo reports them.
	Running      int `json:"running"`
	Waiting      int `json:"waiting"`
	KVBlocksUsed int `json:"kv_blocks_used"`
}

// readStepLog reads a step log with every field stepLogRecord knows.
func readStepLog(path string) ([]stepLogRecord, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var steps []stepLogRecord
	dec := json.NewDecoder(bufio.NewReader(file))
	for line := 1; ; line++ {
		var s stepLogRecord
		if err := dec.Decode(&s); errors.Is(err, io.EOF) {
			return steps, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: step %d: %w", path, line, err)
		}
		steps = append(steps, s)
	}
}
