package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// llamaBase is a minimal Llama config.json body; tests append fields to it.
const llamaBase = `"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
	"num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512`

func TestParseConfig(t *testing.T) {
	llama := Config{Arch: ArchLlama, Dim: 64, Hidden: 172, Layers: 2, Heads: 8, KVHeads: 8, HeadDim: 8, Vocab: 512,
		MaxPos: 2048, RopeTheta: 10000, NormEps: 1e-6, BOS: -1}
	with := func(f func(*Config)) Config {
		c := llama
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		json string
		want Config
	}{
		{"llama defaults", `{` + llamaBase + `}`, llama},
		{"llama full", `{` + llamaBase + `, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096,
			"rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true, "bos_token_id": 1,
			"eos_token_id": [128001, 128009], "torch_dtype": "bfloat16", "hidden_act": "silu",
			"attention_bias": false, "mlp_bias": false, "rope_scaling": null, "pretraining_tp": 1}`,
			with(func(c *Config) {
				c.KVHeads, c.HeadDim, c.MaxPos, c.NormEps, c.RopeTheta, c.Tied = 2, 16, 4096, 1e-5, 500000, true
				c.BOS, c.EOS, c.TorchDType = 1, []int{128001, 128009}, "bfloat16"
			})},
		{"eos int, newer dtype key, null head_dim", `{` + llamaBase + `, "eos_token_id": 2, "dtype": "float16", "head_dim": null}`,
			with(func(c *Config) { c.EOS, c.TorchDType = []int{2}, "float16" })},
		{"llama3 rope scaling", `{` + llamaBase + `, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0,
			"high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}}`,
			with(func(c *Config) {
				c.RopeScaling = RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPos: 8192}
			})},
		{"linear rope scaling, old type key", `{` + llamaBase + `, "rope_scaling": {"type": "linear", "factor": 4}}`,
			with(func(c *Config) { c.RopeScaling = RopeScaling{Type: "linear", Factor: 4} })},
		{"default rope type", `{` + llamaBase + `, "rope_scaling": {"rope_type": "default"}}`, llama},
		{"transformers 5 rope_parameters", `{` + llamaBase + `, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}}`,
			with(func(c *Config) { c.RopeTheta, c.RopeScaling = 1000, RopeScaling{Type: "linear", Factor: 2} })},
		{"model_type without architectures", `{"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
			"num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512}`, llama},
		{"qwen2", `{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
			"num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
			"max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": true,
			"use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 21, "bos_token_id": 151643,
			"eos_token_id": 151645, "torch_dtype": "bfloat16", "hidden_act": "silu", "attention_dropout": 0.0}`,
			Config{Arch: ArchQwen2, Dim: 896, Hidden: 4864, Layers: 24, Heads: 14, KVHeads: 2, HeadDim: 64, Vocab: 151936,
				MaxPos: 32768, RopeTheta: 1e6, NormEps: 1e-6, Tied: true, QKVBias: true, BOS: 151643, EOS: []int{151645},
				TorchDType: "bfloat16"}},
		{"qwen2 with a sliding window in use", `{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
			"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 4096,
			"use_sliding_window": true, "sliding_window": 1024}`,
			Config{Arch: ArchQwen2, Dim: 64, Hidden: 128, Layers: 2, Heads: 4, KVHeads: 4, HeadDim: 16, Vocab: 100,
				MaxPos: 1024, RopeTheta: 10000, NormEps: 1e-6, QKVBias: true, BOS: -1}},
		{"mistral without sliding window", `{"architectures": ["MistralForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
			"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 100,
			"max_position_embeddings": 32768, "sliding_window": null, "head_dim": 32}`,
			Config{Arch: ArchMistral, Dim: 64, Hidden: 128, Layers: 2, Heads: 4, KVHeads: 1, HeadDim: 32, Vocab: 100,
				MaxPos: 32768, RopeTheta: 10000, NormEps: 1e-6, BOS: -1}},
		{"mistral sliding window caps the context", `{"architectures": ["MistralForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
			"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 32768, "sliding_window": 4096}`,
			Config{Arch: ArchMistral, Dim: 64, Hidden: 128, Layers: 2, Heads: 4, KVHeads: 4, HeadDim: 16, Vocab: 100,
				MaxPos: 4096, RopeTheta: 10000, NormEps: 1e-6, BOS: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseConfig (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, json, want string
	}{
		{"not json", `{`, "config.json: "},
		{"unsupported architecture", `{"architectures": ["GPT2LMHeadModel"]}`, `config.json: architectures: unsupported "GPT2LMHeadModel"`},
		{"unsupported model_type", `{"model_type": "gemma"}`, `config.json: model_type: unsupported "gemma"`},
		{"no architecture", `{"hidden_size": 4}`, "config.json: architectures: missing"},
		{"missing hidden_size", `{"architectures": ["LlamaForCausalLM"]}`, "config.json: hidden_size: missing"},
		{"string hidden_size", `{"architectures": ["LlamaForCausalLM"], "hidden_size": "64"}`, `config.json: hidden_size: want an integer, got "64"`},
		{"zero layers", `{` + llamaBase + `, "num_hidden_layers": 0}`, "config.json: num_hidden_layers: want > 0, got 0"},
		{"kv heads do not divide", `{` + llamaBase + `, "num_key_value_heads": 3}`, "config.json: num_key_value_heads: 3 does not divide num_attention_heads 8"},
		{"heads do not divide hidden", `{` + llamaBase + `, "num_attention_heads": 6, "num_key_value_heads": 6}`, "config.json: num_attention_heads: 6 does not divide hidden_size 64"},
		{"odd head_dim", `{` + llamaBase + `, "head_dim": 7}`, "config.json: head_dim: 7 is odd"},
		{"yarn", `{` + llamaBase + `, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}`, `config.json: rope_scaling.rope_type: unsupported "yarn"`},
		{"dynamic, old key", `{` + llamaBase + `, "rope_scaling": {"type": "dynamic", "factor": 2.0}}`, `config.json: rope_scaling.type: unsupported "dynamic"`},
		{"linear without factor", `{` + llamaBase + `, "rope_scaling": {"rope_type": "linear"}}`, "config.json: rope_scaling.factor: missing"},
		{"llama3 without original context", `{` + llamaBase + `, "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}}`,
			"config.json: rope_scaling.original_max_position_embeddings: missing"},
		{"llama3 factors reversed", `{` + llamaBase + `, "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1, "original_max_position_embeddings": 8192}}`,
			"config.json: rope_scaling.high_freq_factor: 1 must exceed low_freq_factor 4"},
		{"rope_scaling not an object", `{` + llamaBase + `, "rope_scaling": 2}`, "config.json: rope_scaling: want an object or null"},
		{"negative rope_theta", `{` + llamaBase + `, "rope_theta": -1}`, "config.json: rope_theta: want > 0"},
		{"zero eps", `{` + llamaBase + `, "rms_norm_eps": 0}`, "config.json: rms_norm_eps: want > 0"},
		{"gelu", `{` + llamaBase + `, "hidden_act": "gelu"}`, `config.json: hidden_act: unsupported "gelu"`},
		{"llama attention bias", `{` + llamaBase + `, "attention_bias": true}`, "config.json: attention_bias: unsupported true"},
		{"mlp bias", `{` + llamaBase + `, "mlp_bias": true}`, "config.json: mlp_bias: unsupported true"},
		{"eos string", `{` + llamaBase + `, "eos_token_id": "</s>"}`, `config.json: eos_token_id: want an int or a list of ints, got "</s>"`},
		{"tie not bool", `{` + llamaBase + `, "tie_word_embeddings": 1}`, "config.json: tie_word_embeddings: want true or false"},
		{"bad sliding window", `{"architectures": ["MistralForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
			"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "sliding_window": 0}`, "config.json: sliding_window: want > 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseConfig error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestLoadGenerationConfig(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	k := func(v int) *int { return &v }
	for _, tc := range []struct {
		name    string
		file    string // "" means no file
		want    GenerationConfig
		wantErr string
	}{
		{name: "missing file"},
		{name: "llama 3", file: `{"bos_token_id": 128000, "do_sample": true, "eos_token_id": [128001, 128008, 128009],
			"temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0"}`,
			want: GenerationConfig{Temperature: f(0.6), TopP: f(0.9), EOS: []int{128001, 128008, 128009}}},
		{name: "qwen2", file: `{"eos_token_id": 151645, "repetition_penalty": 1.1, "temperature": 0.7, "top_k": 20, "top_p": 0.8}`,
			want: GenerationConfig{Temperature: f(0.7), TopP: f(0.8), TopK: k(20), RepetitionPenalty: f(1.1), EOS: []int{151645}}},
		{name: "nulls", file: `{"temperature": null, "top_k": null}`},
		{name: "bad top_k", file: `{"top_k": 2.5}`, wantErr: "top_k: want an integer"},
		{name: "bad json", file: `{"top_k": `, wantErr: "generation_config.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.file != "" {
				if err := os.WriteFile(filepath.Join(dir, GenerationConfigFile), []byte(tc.file), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := LoadGenerationConfig(dir)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("LoadGenerationConfig (-want +got):\n%s", diff)
			}
		})
	}
}
