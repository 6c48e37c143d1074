package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"servelab/engine/model"
	"servelab/engine/modelfile"
	"servelab/engine/safetensors"
	"servelab/engine/tokenizer"
)

func newModelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "model",
		Short: "Write model directories in Hugging Face format: convert checkpoints, synthesise random models",
	}
	cmd.AddCommand(newModelConvertCmd(), newModelSynthCmd())
	return cmd
}

func newModelConvertCmd() *cobra.Command {
	var from, out, tok string
	var weightsOnly bool
	cmd := &cobra.Command{
		Use:   "convert --from llama2c FILE --tokenizer TOKENIZER.BIN --out DIR",
		Short: "Convert a llama2.c checkpoint and its tokenizer.bin into a Hugging Face Llama directory the engine serves",
		Long: `Convert a llama2.c checkpoint (run.c's format) into a Hugging Face Llama directory: the weights
(q/k rows permuted for rotate-half RoPE) as model.safetensors with config.json, and the
tokenizer.bin the checkpoint was trained with (llama2.c's tokenizer.bin for the Llama 2
32000-token vocabulary, or the tokN.bin of a custom vocabulary) as tokenizer.json: a
SentencePiece-style BPE with byte fallback that encodes as run.c does. --weights-only writes the
weights alone (for comparing logits; 'servelab engine' needs tokenizer.json).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from != "llama2c" {
				return fmt.Errorf("--from %q: only llama2c is supported", from)
			}
			if out == "" {
				return fmt.Errorf("--out is required")
			}
			if tok == "" && !weightsOnly {
				return fmt.Errorf("give --tokenizer FILE: the llama2.c tokenizer.bin %s was trained with (tokenizer.bin in llama2.c's repository "+
					"for the Llama 2 32000-token vocabulary, or the tokN.bin of a custom one); 'servelab engine' cannot serve a directory "+
					"without tokenizer.json (--weights-only converts the weights alone)", args[0])
			}
			if tok != "" {
				if _, err := modelfile.ReadLlama2CTokenizer(tok); err != nil { // before the minutes of weights
					return fmt.Errorf("--tokenizer: %w", err)
				}
			}
			if err := modelfile.ConvertLlama2C(args[0], out); err != nil {
				return err
			}
			if weightsOnly {
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (weights only: give --tokenizer FILE for a directory the engine serves)\n", out)
				return nil
			}
			raw, err := os.ReadFile(filepath.Join(out, "config.json"))
			if err != nil {
				return err
			}
			mc, err := model.ParseConfig(raw)
			if err != nil {
				return err
			}
			if err := modelfile.ConvertLlama2CTokenizer(tok, out, mc.Vocab); err != nil {
				return fmt.Errorf("--tokenizer: %w (the weights are in %s)", err, out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (weights and tokenizer; serve it with: servelab engine --model %s)\n", out, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "llama2c", "source format")
	cmd.Flags().StringVar(&out, "out", "", "output directory")
	cmd.Flags().StringVar(&tok, "tokenizer", "", "llama2.c tokenizer.bin of the checkpoint's vocabulary (required unless --weights-only)")
	cmd.Flags().BoolVar(&weightsOnly, "weights-only", false, "convert the weights without a tokenizer")
	return cmd
}

func newModelSynthCmd() *cobra.Command {
	var o synthOptions
	cmd := &cobra.Command{
		Use:   "synth --preset " + strings.Join(modelfile.PresetNames, "|") + " --out DIR",
		Short: "Write a random-weight Llama model with a real BPE tokenizer trained on an embedded text",
		Long: `Write a random-weight model in Hugging Face format (config.json, generation_config.json,
model.safetensors, tokenizer.json, tokenizer_config.json with a chat template), so the engine, its
tests and the profiler run anywhere without downloads. Presets: tiny (dim 64, 2 layers, vocab 512),
15m and 110m (the TinyStories shapes that llama2.c's run.c is benchmarked on, vocab 32000), and
the real shapes of llama-3.2-1b (2.5 GB in bfloat16) and llama-3.1-8b (16 GB in bfloat16, 32 GB
in float32) with their config.json (rope theta 500000, Llama 3.1 rope_scaling, vocab 128256);
--config takes the shape from any Llama config.json instead.

The real shapes are written tensor by tensor (memory holds one tensor, ~1 GB for the 8B's
embedding in bfloat16), their values drawn in parallel from the seed (the same seed gives the
same files on any machine), and sharded as save_pretrained shards them (model-0000i-of-0000n
.safetensors and model.safetensors.index.json past --max-shard-size, 5 GB). The tokenizer is
trained on the embedded text as for the small presets: its 4096 tokens use the first rows of a
larger vocabulary, whose full size the model keeps (and computes).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.out == "" {
				return fmt.Errorf("--out is required")
			}
			o.progress = cmd.ErrOrStderr()
			if cmd.Flags().Changed("preset") && o.config != "" {
				return fmt.Errorf("--preset and --config: give one (--config %s takes the shape from the file)", o.config)
			}
			start := time.Now()
			desc, err := synthModel(o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%s, %s tokenizer) in %.1fs\n", o.out, desc, o.kind, time.Since(start).Seconds())
			return nil
		},
	}
	cmd.Flags().StringVar(&o.preset, "preset", "tiny", "model shape: "+strings.Join(modelfile.PresetNames, ", "))
	cmd.Flags().StringVar(&o.config, "config", "", "take the model shape from this Llama config.json instead of a preset")
	cmd.Flags().StringVar(&o.dtype, "dtype", "auto", "weights' dtype, vLLM's names: auto (the preset's: float32 for tiny, 15m and 110m, bfloat16 for the Llama 3 shapes; --config's torch_dtype), bfloat16, float16 (half) or float32 (float)")
	cmd.Flags().Int64Var(&o.maxShard, "max-shard-size", modelfile.DefaultMaxShardSize, "largest weight file in bytes (save_pretrained's max_shard_size, 5 GB); a larger model is sharded with model.safetensors.index.json (Llama 3 shapes and --config)")
	cmd.Flags().StringVar(&o.out, "out", "", "output directory")
	cmd.Flags().StringVar(&o.kind, "tokenizer", "byte-level", "tokenizer kind: byte-level (Llama-3 style) or sentencepiece (Llama-2 style)")
	cmd.Flags().Uint64Var(&o.seed, "seed", 1, "weight seed")
	cmd.Flags().StringVar(&o.llama2c, "llama2c", "", "also write the same weights as a llama2.c checkpoint (for benchmarking against run.c; tiny, 15m and 110m)")
	return cmd
}

// synthOptions are model synth's flags.
type synthOptions struct {
	preset, config, dtype, out, kind, llama2c string
	seed                                      uint64
	maxShard                                  int64
	progress                                  io.Writer
}

// synthDTypes maps vLLM's --dtype names to safetensors dtypes.
var synthDTypes = map[string]safetensors.DType{
	"bfloat16": safetensors.BF16, "float16": safetensors.F16, "half": safetensors.F16,
	"float32": safetensors.F32, "float": safetensors.F32,
}

// streamedPresets are written tensor by tensor (modelfile.WriteRandom); the small presets
// keep RandomWeights' values, which tests and llama2.c checkpoints rely on.
var streamedPresets = map[string]bool{"llama-3.2-1b": true, "llama-3.1-8b": true}

// synthTokenizerVocab caps the trained vocabulary: the embedded text supports a few
// thousand merges; a larger model vocabulary keeps its shape (and its cost) with unused rows.
const synthTokenizerVocab = 4096

// chatTemplate is a ChatML template, so synthesised models exercise the chat path.
const chatTemplate = `{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}`

// synthModel writes the model o asks for and describes it.
func synthModel(o synthOptions) (string, error) {
	var spec modelfile.Spec
	var err error
	streamed := o.config != "" || streamedPresets[o.preset]
	desc := "preset " + o.preset
	if o.config != "" {
		spec, err = modelfile.ReadConfigFile(o.config)
		desc = "shape of " + o.config
	} else {
		spec, err = modelfile.Preset(o.preset)
	}
	if err != nil {
		return "", err
	}
	if o.dtype != "auto" {
		dt, ok := synthDTypes[o.dtype]
		if !ok {
			return "", fmt.Errorf("--dtype %q: want auto, bfloat16, float16 (half) or float32 (float)", o.dtype)
		}
		spec.DType = dt
	}
	if streamed && o.llama2c != "" {
		return "", fmt.Errorf("--llama2c: only the tiny, 15m and 110m presets have a llama2.c form (llama2.c has no rope_scaling, and a %d-parameter checkpoint is no use to run.c)", spec.NumParams())
	}
	if o.maxShard <= 0 {
		return "", fmt.Errorf("--max-shard-size %d: want a positive number of bytes", o.maxShard)
	}
	var special []string
	switch o.kind {
	case "byte-level":
		special = []string{"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"}
	case "sentencepiece":
		special = []string{"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"}
	default:
		return "", fmt.Errorf("--tokenizer %q: want byte-level or sentencepiece", o.kind)
	}
	tokJSON, tokCfgJSON, err := tokenizer.Train(tokenizer.DefaultCorpus(), tokenizer.TrainConfig{
		VocabSize: min(spec.Vocab, synthTokenizerVocab), Kind: o.kind, Special: special,
	})
	if err != nil {
		return "", err
	}
	tok, err := tokenizer.Parse(tokJSON, tokCfgJSON)
	if err != nil {
		return "", err
	}
	tokCfgJSON, err = withChatTemplate(tokCfgJSON, chatTemplate)
	if err != nil {
		return "", err
	}
	if bos, ok := tok.BOS(); ok {
		spec.BOS = int(bos)
	}
	if eos := tok.EOS(); len(eos) > 0 {
		spec.EOS = int(eos[0])
	}
	if streamed {
		var progress func(written, total int64)
		if isTerminal(o.progress) {
			progress = func(written, total int64) {
				fmt.Fprintf(o.progress, "\rwriting: %.2f of %.2f GB", float64(written)/1e9, float64(total)/1e9)
			}
		}
		st, err := modelfile.WriteRandom(o.out, spec, o.seed, modelfile.RandomOptions{MaxShardSize: o.maxShard, Progress: progress})
		if progress != nil {
			fmt.Fprintln(o.progress)
		}
		if err != nil {
			return "", err
		}
		desc += fmt.Sprintf(", %.2fB parameters, %s, %.2f GB in %d file(s)", float64(st.Params)/1e9, spec.DType, float64(st.Bytes)/1e9, len(st.Files))
	} else {
		weights := modelfile.RandomWeights(spec, o.seed)
		if err := modelfile.Write(o.out, spec, weights); err != nil {
			return "", err
		}
		if o.llama2c != "" {
			if err := modelfile.WriteLlama2C(o.llama2c, spec, weights); err != nil {
				return "", err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(o.out, "tokenizer.json"), tokJSON, 0o644); err != nil {
		return "", err
	}
	return desc, os.WriteFile(filepath.Join(o.out, "tokenizer_config.json"), tokCfgJSON, 0o644)
}

func withChatTemplate(tokenizerConfig []byte, template string) ([]byte, error) {
	cfg := map[string]any{}
	if len(tokenizerConfig) > 0 {
		if err := json.Unmarshal(tokenizerConfig, &cfg); err != nil {
			return nil, fmt.Errorf("tokenizer_config.json: %w", err)
		}
	}
	cfg["chat_template"] = template
	out, err := json.MarshalIndent(cfg, "", "  ")
	return append(out, '\n'), err
}
