package main

import (
	"fmt"
	"math"
	"strconv"

	"servelab/traces"
)

// tokenScaleHelp is the --token-scale flag's help, the same in bench, sim and fidelity.
const tokenScaleHelp = "multiply the trace's token counts (hash blocks scale with them), to replay big-model traffic on a small model; " +
	"auto: make the mean prompt a quarter of the model's context (at most 1) and clip requests to the context"

// resolveTokenScale turns a --token-scale value into a factor: a positive number as
// given, or "auto", which makes the mean prompt of the workload s a quarter of the
// context, and, for traces with prefix hash ids, makes each hash block a whole number of
// blockSize-token KV blocks: the simulator shares only KV blocks that lie inside one hash
// block, and the real prompts share exactly the tokens of equal hash blocks, so the two
// agree only on whole blocks. bench, sim and fidelity all choose their scale here.
func resolveTokenScale(flag string, s traces.Shape, context, blockSize int) (float64, error) {
	if flag != "auto" {
		v, err := strconv.ParseFloat(flag, 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return 0, fmt.Errorf("--token-scale: want a positive number or auto, got %q", flag)
		}
		return v, nil
	}
	if context <= 0 {
		return 0, fmt.Errorf("--token-scale auto needs the model's context: give --max-model-len N (or --token-scale 1)")
	}
	if s.MeanInput <= 0 {
		return 1, nil
	}
	scale := math.Min(1, float64(context)/4/s.MeanInput)
	if s.HashBlockSize > 0 && blockSize > 0 {
		blocks := math.Max(1, math.Round(float64(s.HashBlockSize)*scale/float64(blockSize)))
		scale = blocks * float64(blockSize) / float64(s.HashBlockSize)
	}
	return scale, nil
}
