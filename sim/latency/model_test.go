package latency

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestShippedConfigsMatchTheHub(t *testing.T) {
	// The architecture values of the Hub's config.json files (see data/models/README.md).
	want := map[string]ModelConfig{
		"llama-3.1-8b": {Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama", HiddenSize: 4096, IntermediateSize: 14336,
			NumHiddenLayers: 32, NumAttentionHeads: 32, NumKeyValueHeads: 8, HeadDim: 128, VocabSize: 128256,
			MaxPositionEmbeddings: 131072, TorchDtype: "bfloat16", HiddenAct: "silu", RMSNormEps: 1e-5, RopeTheta: 500000},
		"llama-3.1-70b": {Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama", HiddenSize: 8192, IntermediateSize: 28672,
			NumHiddenLayers: 80, NumAttentionHeads: 64, NumKeyValueHeads: 8, HeadDim: 128, VocabSize: 128256,
			MaxPositionEmbeddings: 131072, TorchDtype: "bfloat16", HiddenAct: "silu", RMSNormEps: 1e-5, RopeTheta: 500000},
		"qwen2.5-7b": {Architectures: []string{"Qwen2ForCausalLM"}, ModelType: "qwen2", HiddenSize: 3584, IntermediateSize: 18944,
			NumHiddenLayers: 28, NumAttentionHeads: 28, NumKeyValueHeads: 4, HeadDim: 128, VocabSize: 152064,
			MaxPositionEmbeddings: 32768, TorchDtype: "bfloat16", HiddenAct: "silu", RMSNormEps: 1e-6, RopeTheta: 1e6},
		"mistral-7b": {Architectures: []string{"MistralForCausalLM"}, ModelType: "mistral", HiddenSize: 4096, IntermediateSize: 14336,
			NumHiddenLayers: 32, NumAttentionHeads: 32, NumKeyValueHeads: 8, HeadDim: 128, VocabSize: 32768,
			MaxPositionEmbeddings: 32768, TorchDtype: "bfloat16", HiddenAct: "silu", RMSNormEps: 1e-5, RopeTheta: 1e6},
	}
	if diff := cmp.Diff([]string{"llama-3.1-70b", "llama-3.1-8b", "mistral-7b", "qwen2.5-7b"}, ModelNames()); diff != "" {
		t.Errorf("ModelNames (-want +got):\n%s", diff)
	}
	for name, w := range want {
		got, err := LookupModel(name)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, got, cmpopts.IgnoreFields(ModelConfig{}, "Name")); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
		if got.Name != name {
			t.Errorf("%s: Name %q", name, got.Name)
		}
	}
}

func TestParamCounts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		published float64 // the rounded size on the model card
		exact     int64   // the checkpoint's safetensors total
	}{
		{"llama-3.1-8b", 8.03e9, 8_030_261_248},
		{"llama-3.1-70b", 70.6e9, 70_553_706_496},
		{"qwen2.5-7b", 7.62e9, 7_615_616_512}, // includes the q, k and v biases
		{"mistral-7b", 7.25e9, 7_248_023_552},
	} {
		m, err := LookupModel(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		got := m.Params()
		if math.Abs(float64(got)-tc.published) > 0.01*tc.published {
			t.Errorf("%s: %d parameters, want %.3g within 1%%", tc.name, got, tc.published)
		}
		if got != tc.exact {
			t.Errorf("%s: %d parameters, want exactly %d", tc.name, got, tc.exact)
		}
	}
}

func TestTiedEmbeddingsAndBiasesCount(t *testing.T) {
	base := ModelConfig{HiddenSize: 64, IntermediateSize: 128, NumHiddenLayers: 2, NumAttentionHeads: 4, NumKeyValueHeads: 2, VocabSize: 1000}
	if err := base.normalize(); err != nil {
		t.Fatal(err)
	}
	// q 64x64, k and v 64x32, o 64x64, three 64x128 MLP matrices, two norms.
	layer := int64(64*64 + 2*64*32 + 64*64 + 3*64*128 + 2*64)
	if got := base.LayerParams(); got != layer {
		t.Errorf("layer params %d, want %d", got, layer)
	}
	untied := base.Params()
	if want := 2*1000*64 + 2*layer + 64; untied != want {
		t.Errorf("untied params %d, want %d", untied, want)
	}
	tied := base
	tied.TieWordEmbeddings = true
	if got := tied.Params(); got != untied-1000*64 {
		t.Errorf("tied params %d, want %d", got, untied-1000*64)
	}
	for _, tc := range []struct {
		name   string
		change func(*ModelConfig)
		extra  int64
	}{
		{"qwen2 qkv bias", func(m *ModelConfig) { m.Architectures = []string{"Qwen2ForCausalLM"} }, 64 + 2*32},
		{"llama attention_bias", func(m *ModelConfig) { m.AttentionBias = true }, 64 + 2*32 + 64},
		{"llama mlp_bias", func(m *ModelConfig) { m.MLPBias = true }, 2*128 + 64},
	} {
		m := base
		tc.change(&m)
		if got := m.LayerParams() - layer; got != tc.extra {
			t.Errorf("%s: %d extra parameters per layer, want %d", tc.name, got, tc.extra)
		}
	}
}

func TestBadModelConfigsNameTheField(t *testing.T) {
	valid := `"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100`
	for _, tc := range []struct{ body, want string }{
		{`{"intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}`, `"hidden_size"`},
		{`{` + valid + `, "num_key_value_heads": 3}`, `"num_key_value_heads"`},
		{`{` + valid + `, "num_local_experts": 8}`, `mixture-of-experts`},
		{`{` + valid + `, "quantization_config": {"quant_method": "awq"}}`, `"quantization_config"`},
		{`{` + valid + `, "torch_dtype": "float8_e4m3fn"}`, `"torch_dtype"`},
		{`{` + valid + `, "dtype": "int8"}`, `"dtype"`},
		{`{"hidden_size": 66, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}`, `"head_dim"`},
		{`{` + valid + `, "hidden_act": 3}`, `field "hidden_act"`},
		{"{\n  \"hidden_size\": 64,\n  oops\n}", ":3:3:"},
	} {
		_, err := ParseModelConfig([]byte(tc.body), "cfg.json")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "cfg.json") {
			t.Errorf("%s: error %v, want one starting with cfg.json and naming %s", tc.body, err, tc.want)
		}
	}
}

func TestLookupModelReadsFilesAndDirectories(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile("testdata/tiny-config.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"testdata/tiny-config.json", dir} {
		m, err := LookupModel(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// The file leaves num_key_value_heads and head_dim to their Hugging Face defaults.
		if m.NumKeyValueHeads != 4 || m.HeadDim != 16 || m.Params() <= 0 {
			t.Errorf("%s: kv heads %d, head dim %d, params %d", name, m.NumKeyValueHeads, m.HeadDim, m.Params())
		}
	}
	_, err = LookupModel("gpt-9")
	if err == nil || !strings.Contains(err.Error(), "llama-3.1-8b") {
		t.Errorf("unknown model: %v, want an error listing the known ones", err)
	}
	if _, err := LookupModel("missing/config.json"); err == nil {
		t.Error("missing file accepted")
	}
}

func FuzzParseModelConfig(f *testing.F) {
	for _, name := range []string{"llama-3.1-8b", "qwen2.5-7b"} {
		raw, err := data.ReadFile("data/models/" + name + ".json")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte(`{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "num_key_value_heads": 2}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := ParseModelConfig(raw, "fuzz.json")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.json") {
				t.Fatalf("error does not name the source: %v", err)
			}
			return
		}
		if m.HeadDim <= 0 || m.NumKeyValueHeads <= 0 || m.NumAttentionHeads%m.NumKeyValueHeads != 0 {
			t.Fatalf("accepted an inconsistent config: %+v", m)
		}
		if err := m.checkTP(1); err != nil {
			t.Fatalf("accepted config cannot run on one GPU: %v", err)
		}
	})
}
