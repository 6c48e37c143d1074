package modelfile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/engine/model"
	"servelab/engine/safetensors"
)

// The Llama 3 presets are the published models' shapes: parameter counts as the Hub's
// model cards and index files give them (Llama-3.1-8B's index: total_size 16060522496 in
// bfloat16), and config.json's architecture fields as in the copy of
// meta-llama/Llama-3.1-8B-Instruct's that the simulator ships.
func TestLlama3Presets(t *testing.T) {
	for _, tt := range []struct {
		name   string
		params int
	}{{"llama-3.2-1b", 1235814400}, {"llama-3.1-8b", 8030261248}} {
		s, err := Preset(tt.name)
		if err != nil {
			t.Fatal(err)
		}
		if s.NumParams() != tt.params {
			t.Errorf("%s: NumParams = %d, want %d", tt.name, s.NumParams(), tt.params)
		}
		var total int64
		for _, ti := range stateDict(s) {
			n, _ := ti.ByteSize()
			total += int64(n)
		}
		if total != 2*int64(tt.params) {
			t.Errorf("%s: state dict is %d bytes, want %d in bfloat16", tt.name, total, 2*tt.params)
		}
	}
	s, _ := Preset("llama-3.1-8b")
	raw, err := ConfigJSON(s)
	if err != nil {
		t.Fatal(err)
	}
	hub, err := os.ReadFile("../../sim/latency/data/models/llama-3.1-8b.json")
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(hub, &want); err != nil {
		t.Fatal(err)
	}
	// Token ids come from the tokenizer servelab trains; head_dim is written explicitly,
	// as newer transformers do; the version is the writer's.
	for _, k := range []string{"bos_token_id", "eos_token_id", "transformers_version", "head_dim"} {
		delete(got, k)
		delete(want, k)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("config.json of llama-3.1-8b (-hub +synth):\n%s", diff)
	}
}

func TestShardPlan(t *testing.T) {
	f32 := func(n int) safetensors.TensorInfo {
		return safetensors.TensorInfo{DType: safetensors.F32, Shape: []int{n / 4}}
	}
	tests := []struct {
		name  string
		sizes []int
		max   int64
		want  [][]int
	}{
		{"one shard", []int{8, 8, 8}, 100, [][]int{{0, 1, 2}}},
		{"exactly full", []int{40, 60, 4}, 100, [][]int{{0, 1}, {2}}},
		{"tips over", []int{40, 64, 4}, 100, [][]int{{0}, {1, 2}}},
		{"larger than a shard", []int{8, 200, 8}, 100, [][]int{{0}, {1}, {2}}},
	}
	for _, tt := range tests {
		var ts []safetensors.TensorInfo
		for _, s := range tt.sizes {
			ts = append(ts, f32(s))
		}
		if diff := cmp.Diff(tt.want, shardPlan(ts, tt.max)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

// tinyLlama3 is a small shape with what the Llama 3 presets have: grouped-query attention,
// an untied classifier, Llama 3.1 rope_scaling and bfloat16.
func tinyLlama3() Spec {
	return Spec{Dim: 64, Hidden: 160, Layers: 3, Heads: 8, KVHeads: 2, Vocab: 300, MaxSeqLen: 4096, RopeTheta: 500000,
		NormEps: 1e-5, BOS: 1, EOS: 2, DType: safetensors.BF16,
		RopeScaling: &RopeScaling{Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 256}}
}

// WriteRandom shards as save_pretrained does, with an index the loader reads; the engine
// loads the result and its logits are of a sane size; the files depend on the seed alone.
func TestWriteRandomSharded(t *testing.T) {
	spec := tinyLlama3()
	dir := t.TempDir()
	const maxShard = 100000 // a layer is 81 kB in bfloat16: 4 shards
	st, err := WriteRandom(dir, spec, 7, RandomOptions{MaxShardSize: maxShard, Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	if st.Params != int64(spec.NumParams()) || st.Bytes != 2*st.Params {
		t.Errorf("stats %+v, want %d params in %d bytes", st, spec.NumParams(), 2*spec.NumParams())
	}
	if len(st.Files) < 3 {
		t.Fatalf("files %v: want several shards of %d bytes", st.Files, maxShard)
	}
	for i, f := range st.Files {
		if want := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(st.Files)); f != want {
			t.Errorf("shard %d is %s, want %s", i, f, want)
		}
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() > maxShard+4096 {
			t.Errorf("shard %s: %v, size past %d", f, err, maxShard)
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, safetensors.IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.Metadata["total_size"] != st.Bytes || len(idx.WeightMap) != len(stateDict(spec)) {
		t.Errorf("index: total_size %d (want %d), %d tensors (want %d)", idx.Metadata["total_size"], st.Bytes, len(idx.WeightMap), len(stateDict(spec)))
	}
	if got, err := ReadConfig(dir); err != nil {
		t.Fatal(err)
	} else if diff := cmp.Diff(spec, got); diff != "" {
		t.Errorf("config.json read back (-want +got):\n%s", diff)
	}

	// The values: matrices N(0, 0.02²), norms 1.
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"model.layers.1.mlp.down_proj.weight", "lm_head.weight", "model.embed_tokens.weight"} {
		tn, _ := set.Tensor(name)
		v, err := tn.Float32()
		if err != nil {
			t.Fatal(err)
		}
		var s, s2 float64
		for _, x := range v {
			s += float64(x)
			s2 += float64(x) * float64(x)
		}
		mean, std := s/float64(len(v)), math.Sqrt(s2/float64(len(v)))
		if math.Abs(mean) > 0.002 || math.Abs(std-InitStd) > 0.002 {
			t.Errorf("%s: mean %.4f std %.4f, want 0 and %g", name, mean, std, InitStd)
		}
	}
	if tn, _ := set.Tensor("model.layers.2.input_layernorm.weight"); tn != nil {
		v, _ := tn.Float32()
		if slices.ContainsFunc(v, func(x float32) bool { return x != 1 }) {
			t.Errorf("input_layernorm is not all ones")
		}
	}

	m, err := model.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.RopeScaling.Type != "llama3" || m.Config.RopeScaling.Factor != 8 {
		t.Errorf("the engine read rope scaling %+v", m.Config.RopeScaling)
	}
	cache := m.NewKVCache(4, 16)
	logits := m.NewRunner(cache).Forward([]model.SeqInput{{Tokens: []int32{1, 5, 77, 299, 3, 150}, Blocks: []int32{0}, Logits: true}})[0]
	var s2 float64
	for _, x := range logits {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			t.Fatalf("logit %v", x)
		}
		s2 += float64(x) * float64(x)
	}
	if rms := math.Sqrt(s2 / float64(len(logits))); rms < 0.05 || rms > 20 {
		t.Errorf("logits' RMS %.3g: activations out of scale", rms)
	}

	// The same seed gives the same files whatever the workers; another seed other values.
	again := t.TempDir()
	if _, err := WriteRandom(again, spec, 7, RandomOptions{MaxShardSize: maxShard, Workers: 1}); err != nil {
		t.Fatal(err)
	}
	for _, f := range append(slices.Clone(st.Files), safetensors.IndexFileName, ConfigFile) {
		a, _ := os.ReadFile(filepath.Join(dir, f))
		b, _ := os.ReadFile(filepath.Join(again, f))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between 3 workers and 1", f)
		}
	}
	other := t.TempDir()
	if _, err := WriteRandom(other, spec, 8, RandomOptions{MaxShardSize: maxShard}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, st.Files[1]))
	b, _ := os.ReadFile(filepath.Join(other, st.Files[1]))
	if bytes.Equal(a, b) {
		t.Errorf("seeds 7 and 8 wrote the same %s", st.Files[1])
	}

	// Rewritten unsharded, the directory keeps no shard or index of the first model (the
	// loader would prefer model.safetensors, but the stale files mislead people).
	st2, err := WriteRandom(dir, spec, 7, RandomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{safetensors.SingleFileName}, st2.Files); diff != "" {
		t.Errorf("unsharded files (-want +got):\n%s", diff)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{ConfigFile, GenerationConfigFile, safetensors.SingleFileName}, names); diff != "" {
		t.Errorf("directory after rewriting (-want +got):\n%s", diff)
	}
}

// Float32 and float16 are written in their own dtypes; bad specs are refused.
func TestWriteRandomDTypesAndErrors(t *testing.T) {
	for _, dt := range []safetensors.DType{safetensors.F32, safetensors.F16} {
		spec := tinyLlama3()
		spec.DType = dt
		dir := t.TempDir()
		if _, err := WriteRandom(dir, spec, 1, RandomOptions{}); err != nil {
			t.Fatal(err)
		}
		f, err := safetensors.Open(filepath.Join(dir, safetensors.SingleFileName))
		if err != nil {
			t.Fatal(err)
		}
		if tn, _ := f.Tensor("lm_head.weight"); tn.DType != dt {
			t.Errorf("lm_head is %s, want %s", tn.DType, dt)
		}
	}
	bad := tinyLlama3()
	bad.RopeScaling.HighFreqFactor = 0.5
	if _, err := WriteRandom(t.TempDir(), bad, 1, RandomOptions{}); err == nil || !strings.Contains(err.Error(), "high_freq_factor") {
		t.Errorf("err = %v, want the rope_scaling factors named", err)
	}
}
