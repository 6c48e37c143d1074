package main

import (
	"strings"
	"testing"
)

// TestEngineDTypeRefusals: --dtype bfloat16 is for --device cuda (the CPU computes in
// float32), and unknown dtypes are refused naming the flag.
func TestEngineDTypeRefusals(t *testing.T) {
	dir := synthTiny(t)
	for _, tc := range []struct {
		dtype, want string
	}{
		{"bfloat16", "--dtype bfloat16: the CPU kernels compute in float32"},
		{"float16", `--dtype "float16": want auto, float32 or bfloat16`},
	} {
		_, err := run(t, "engine", "--model", dir, "--dtype", tc.dtype, "--port", "0")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--dtype %s: err = %v; want %q", tc.dtype, err, tc.want)
		}
	}
}
