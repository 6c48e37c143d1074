package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/engine/backend"
	"servelab/engine/safetensors"
)

// tinyLlama3Config is a Llama 3.1-style config.json (GQA, untied, llama3 rope_scaling,
// bfloat16) of a few kilobytes of weights: model synth --config writes it as the Llama 3
// presets are written (tensor by tensor, sharded past --max-shard-size).
const tinyLlama3Config = `{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
  "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
  "vocab_size": 4096, "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
    "original_max_position_embeddings": 512, "rope_type": "llama3"},
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}`

func TestModelSynthConfigSharded(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(tinyLlama3Config), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "model")
	msg, err := run(t, "model", "synth", "--config", cfg, "--max-shard-size", "300000", "--out", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "BF16") || !strings.Contains(msg, "in 3 file(s)") {
		t.Errorf("output %q: want the dtype and 3 shards", msg)
	}
	if _, err := os.Stat(filepath.Join(out, safetensors.IndexFileName)); err != nil {
		t.Errorf("no index: %v", err)
	}
	b, err := backend.Load(backend.Options{Dir: out, NumBlocks: 8, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if c := b.Model.Config; c.RopeScaling.Type != "llama3" || c.KVHeads != 2 || c.Tied {
		t.Errorf("engine config %+v", c)
	}

	// --dtype float32 rewrites the same directory in float32, unsharded (2x the bytes, one file
	// at the default shard size), with no stale shard or index left.
	if msg, err = run(t, "model", "synth", "--config", cfg, "--dtype", "float32", "--out", out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "F32") || !strings.Contains(msg, "in 1 file(s)") {
		t.Errorf("output %q: want F32 in one file", msg)
	}
	if left, _ := filepath.Glob(filepath.Join(out, "model-*")); len(left) != 0 {
		t.Errorf("stale shards %v", left)
	}
}

func TestModelSynthErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(tinyLlama3Config), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--preset", "llama-3.1-8b", "--dtype", "fp8"}, `--dtype "fp8"`},
		{[]string{"--preset", "llama-3.1-8b", "--llama2c", filepath.Join(dir, "x.bin")}, "--llama2c: only the tiny, 15m and 110m presets"},
		{[]string{"--preset", "tiny", "--config", cfg}, "--preset and --config"},
		{[]string{"--preset", "70b"}, `unknown preset "70b" (want tiny, 15m, 110m, llama-3.2-1b, llama-3.1-8b)`},
		{[]string{"--config", cfg, "--max-shard-size", "0"}, "--max-shard-size 0"},
	} {
		_, err := run(t, append([]string{"model", "synth", "--out", out}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a refused synth wrote %s", out)
	}
}
