package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"servelab/engine/model"
	"servelab/engine/modelfile"
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
	var preset, out, kind, llama2c string
	var seed uint64
	cmd := &cobra.Command{
		Use:   "synth --preset tiny|15m|110m --out DIR",
		Short: "Write a random-weight Llama model with a real BPE tokenizer trained on an embedded text",
		Long: `Write a random-weight model in Hugging Face format (config.json, generation_config.json,
model.safetensors, tokenizer.json, tokenizer_config.json with a chat template), so the engine, its
tests and the profiler run anywhere without downloads. Presets: tiny (dim 64, 2 layers, vocab 512),
15m and 110m (the TinyStories shapes that llama2.c's run.c is benchmarked on, vocab 32000).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out is required")
			}
			if err := synthModel(preset, kind, seed, out, llama2c); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (preset %s, %s tokenizer)\n", out, preset, kind)
			return nil
		},
	}
	cmd.Flags().StringVar(&preset, "preset", "tiny", "model shape: tiny, 15m or 110m")
	cmd.Flags().StringVar(&out, "out", "", "output directory")
	cmd.Flags().StringVar(&kind, "tokenizer", "byte-level", "tokenizer kind: byte-level (Llama-3 style) or sentencepiece (Llama-2 style)")
	cmd.Flags().Uint64Var(&seed, "seed", 1, "weight seed")
	cmd.Flags().StringVar(&llama2c, "llama2c", "", "also write the same weights as a llama2.c checkpoint (for benchmarking against run.c)")
	return cmd
}

// synthTokenizerVocab caps the trained vocabulary: the embedded text supports a few
// thousand merges; a larger model vocabulary keeps its shape (and its cost) with unused rows.
const synthTokenizerVocab = 4096

// chatTemplate is a ChatML template, so synthesised models exercise the chat path.
const chatTemplate = `{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}`

func synthModel(preset, kind string, seed uint64, out, llama2c string) error {
	spec, err := modelfile.Preset(preset)
	if err != nil {
		return err
	}
	var special []string
	switch kind {
	case "byte-level":
		special = []string{"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"}
	case "sentencepiece":
		special = []string{"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"}
	default:
		return fmt.Errorf("--tokenizer %q: want byte-level or sentencepiece", kind)
	}
	tokJSON, tokCfgJSON, err := tokenizer.Train(tokenizer.DefaultCorpus(), tokenizer.TrainConfig{
		VocabSize: min(spec.Vocab, synthTokenizerVocab), Kind: kind, Special: special,
	})
	if err != nil {
		return err
	}
	tok, err := tokenizer.Parse(tokJSON, tokCfgJSON)
	if err != nil {
		return err
	}
	tokCfgJSON, err = withChatTemplate(tokCfgJSON, chatTemplate)
	if err != nil {
		return err
	}
	if bos, ok := tok.BOS(); ok {
		spec.BOS = int(bos)
	}
	if eos := tok.EOS(); len(eos) > 0 {
		spec.EOS = int(eos[0])
	}
	weights := modelfile.RandomWeights(spec, seed)
	if err := modelfile.Write(out, spec, weights); err != nil {
		return err
	}
	if llama2c != "" {
		if err := modelfile.WriteLlama2C(llama2c, spec, weights); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(out, "tokenizer.json"), tokJSON, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "tokenizer_config.json"), tokCfgJSON, 0o644)
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
