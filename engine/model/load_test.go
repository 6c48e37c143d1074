package model

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"servelab/engine/safetensors"
)

// TestLoadErrors: a bad model directory fails to load with an error naming the tensor (and
// the expected and found shapes) or the config field.
func TestLoadErrors(t *testing.T) {
	qwen := testArchs[2] // Qwen2: biases, tied
	llama := testArchs[0]
	drop := func(name string) func([]safetensors.Tensor) []safetensors.Tensor {
		return func(ts []safetensors.Tensor) []safetensors.Tensor {
			return slices.DeleteFunc(ts, func(x safetensors.Tensor) bool { return x.Name == name })
		}
	}
	extra := func(name string, shape ...int) func([]safetensors.Tensor) []safetensors.Tensor {
		return func(ts []safetensors.Tensor) []safetensors.Tensor {
			n := 1
			for _, s := range shape {
				n *= s
			}
			return append(ts, safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: safetensors.EncodeF32(make([]float32, n))})
		}
	}
	reshape := func(name string, shape ...int) func([]safetensors.Tensor) []safetensors.Tensor {
		return func(ts []safetensors.Tensor) []safetensors.Tensor {
			for i := range ts {
				if ts[i].Name == name {
					ts[i].Shape = shape
				}
			}
			return ts
		}
	}
	for _, tc := range []struct {
		name    string
		a       testArch
		config  func(map[string]any)
		tensors func([]safetensors.Tensor) []safetensors.Tensor
		want    string
	}{
		{name: "wrong shape", a: llama, tensors: reshape("model.layers.1.self_attn.k_proj.weight", 16, 64),
			want: "tensor model.layers.1.self_attn.k_proj.weight: shape [16 64], want [32 32]"},
		{name: "missing tensor", a: llama, tensors: drop("model.norm.weight"),
			want: "tensor model.norm.weight: missing (want shape [32])"},
		{name: "missing classifier of an untied model", a: llama, tensors: drop("lm_head.weight"),
			want: "tensor lm_head.weight: missing (want shape [96 32])"},
		{name: "missing qwen2 bias", a: qwen, tensors: drop("model.layers.0.self_attn.v_proj.bias"),
			want: "tensor model.layers.0.self_attn.v_proj.bias: missing (want shape [16])"},
		{name: "unexpected tensor", a: llama, tensors: extra("model.layers.0.self_attn.o_proj.bias", 32),
			want: "tensor model.layers.0.self_attn.o_proj.bias: unexpected for LlamaForCausalLM"},
		{name: "layer beyond the config", a: llama, tensors: extra("model.layers.2.input_layernorm.weight", 32),
			want: "tensor model.layers.2.input_layernorm.weight: unexpected"},
		{name: "tied classifier of the wrong shape", a: qwen, tensors: extra("lm_head.weight", 96, 16),
			want: "tensor lm_head.weight: shape [96 16], want [96 32]"},
		{name: "several problems", a: llama, tensors: func(ts []safetensors.Tensor) []safetensors.Tensor {
			return drop("model.norm.weight")(drop("model.embed_tokens.weight")(ts))
		}, want: "tensor model.embed_tokens.weight: missing (want shape [96 32]) (and 1 more tensor problems)"},
		{name: "unsupported dtype", a: llama, tensors: func(ts []safetensors.Tensor) []safetensors.Tensor {
			for i := range ts {
				if ts[i].Name == "model.norm.weight" {
					ts[i].DType = safetensors.I32
				}
			}
			return ts
		}, want: "tensor model.norm.weight"},
		{name: "bad config field", a: llama, config: func(c map[string]any) {
			c["rope_scaling"] = map[string]any{"rope_type": "yarn", "factor": 4.0}
		}, want: `config.json: rope_scaling.rope_type: unsupported "yarn"`},
		{name: "missing config field", a: llama, config: func(c map[string]any) { delete(c, "vocab_size") },
			want: "config.json: vocab_size: missing"},
		{name: "head_dim disagreeing with the tensors", a: llama, config: func(c map[string]any) { c["head_dim"] = 4 },
			want: "tensor model.layers.0.self_attn.q_proj.weight: shape [32 32], want [16 32]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rm := newRefModel(tc.a, 1)
			dir := t.TempDir()
			rm.write(t, dir, tc.config, tc.tensors)
			_, err := Load(dir, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	t.Run("no config", func(t *testing.T) {
		if _, err := Load(t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "config.json") {
			t.Errorf("Load error = %v, want one about config.json", err)
		}
	})
	t.Run("no weights", func(t *testing.T) {
		dir := t.TempDir()
		raw := `{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 4}`
		if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(raw), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(dir, nil); err == nil || !strings.Contains(err.Error(), "model.safetensors") {
			t.Errorf("Load error = %v, want one about model.safetensors", err)
		}
	})
}

// TestLoadVariants: F16 weights, a sharded checkpoint, rotary inv_freq buffers and a tied
// model's redundant lm_head.weight all load, and compute the reference's logits.
func TestLoadVariants(t *testing.T) {
	for _, tc := range []struct {
		name    string
		a       testArch
		tensors func([]safetensors.Tensor) []safetensors.Tensor
	}{
		{name: "f16", a: func() testArch { a := testArchs[0]; a.dtype = safetensors.F16; return a }()},
		{name: "f32 in two shards", a: func() testArch { a := testArchs[3]; a.shards = 2; return a }()},
		{name: "inv_freq buffers and a tied lm_head", a: testArchs[2], tensors: func(ts []safetensors.Tensor) []safetensors.Tensor {
			var embed safetensors.Tensor
			for _, x := range ts {
				if x.Name == "model.embed_tokens.weight" {
					embed = x
				}
			}
			head := embed
			head.Name = "lm_head.weight"
			inv := safetensors.Tensor{Name: "model.layers.0.self_attn.rotary_emb.inv_freq", DType: safetensors.F32, Shape: []int{4}, Data: safetensors.EncodeF32(make([]float32, 4))}
			return append(ts, head, inv)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rm := newRefModel(tc.a, 5)
			dir := t.TempDir()
			rm.write(t, dir, nil, tc.tensors)
			m, err := Load(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			toks := []int32{3, 1, 4, 1, 5, 9, 2, 6, 5, 3}
			want := rm.refForward(toks)
			cache := m.NewKVCache(4, 4)
			out := m.NewRunner(cache).Forward([]SeqInput{{Tokens: toks, Blocks: []int32{2, 0, 3}, Logits: true}})
			checkLogits(t, "last position", out[0], want[len(toks)-1])
		})
	}
}

func TestKVBytesPerBlock(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		bs   int
		want int
	}{
		// Llama 2 7B: 32 layers, 32 kv heads of 128: 16 MiB per 16-token block.
		{"llama2-7b", Config{Layers: 32, KVHeads: 32, HeadDim: 128}, 16, 16 << 20},
		// Llama 3 8B: 8 kv heads: 4 MiB.
		{"llama3-8b", Config{Layers: 32, KVHeads: 8, HeadDim: 128}, 16, 4 << 20},
		{"stories15m", Config{Layers: 6, KVHeads: 6, HeadDim: 48}, 16, 2 * 6 * 16 * 288 * 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Model{Config: tc.c}
			if got := m.KVBytesPerBlock(tc.bs); got != tc.want {
				t.Errorf("KVBytesPerBlock(%d) = %d, want %d", tc.bs, got, tc.want)
			}
		})
	}
	// And it is what NewKVCache allocates.
	rm := newRefModel(testArchs[1], 1)
	m := rm.load(t)
	c := m.NewKVCache(3, 5)
	got := 0
	for l := range c.k {
		got += 4 * (len(c.k[l]) + len(c.v[l]))
	}
	if want := 3 * m.KVBytesPerBlock(5); got != want {
		t.Errorf("NewKVCache(3, 5) holds %d bytes, want %d", got, want)
	}
}
