package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"servelab/serving"
	"servelab/sim/latency"
)

func newProfileCompareCmd() *cobra.Command {
	var gpu, model, spec string
	cmd := &cobra.Command{
		Use:   "compare [PROFILE] [--gpu h200] [--model DIR|NAME]",
		Short: "Set a profile's measured step times beside the simulator's roofline for a GPU (a Markdown table)",
		Long: `Print, as a Markdown table (docs/BENCHMARKS.md holds them), the steps a profile measured — single
prompts by length, decode batches by size and context — with their measured time, the
profile's fitted linear model's, and the roofline's that 'servelab sim --latency roofline'
uses for the GPU (--latency gives its parameters), and measured over roofline.

--gpu defaults to the GPU the profile was measured on ("gpu" in the profile); --model to the
profile's model directory (its config.json), or a model the simulator knows (llama-3.1-8b).
A CPU profile against a GPU's roofline compares two machines, which the table says.

Without a PROFILE (--gpu and --model then required) the table has the roofline alone, for
the GPU grid's single prompts (512 to 8192 tokens) and decode batches (1 to 256 at context
1024), its measured columns "not measured": what a GPU profile will be set beside.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return rooflineOnly(cmd.OutOrStdout(), gpu, model, spec)
			}
			p, err := latency.LoadProfile(args[0])
			if err != nil {
				return err
			}
			return compareProfile(cmd.OutOrStdout(), args[0], p, gpu, model, spec)
		},
	}
	cmd.Flags().StringVar(&gpu, "gpu", "", "the roofline's GPU: "+strings.Join(latency.GPUNames(), ", ")+" (default: the profile's)")
	cmd.Flags().StringVar(&model, "model", "", "the roofline's model: a directory or config.json, or "+strings.Join(latency.ModelNames(), ", ")+" (default: the profile's model directory)")
	cmd.Flags().StringVar(&spec, "latency", "roofline", "the roofline's spec, as sim's --latency takes it (roofline:mfu=0.5,overhead_ms=2)")
	return cmd
}

// rooflineOnly writes compare's table without a profile: the roofline's step times for
// the GPU grid's single prompts and decode batches.
func rooflineOnly(w io.Writer, gpu, model, spec string) error {
	if gpu == "" || model == "" {
		return fmt.Errorf("--gpu and --model: without a PROFILE, give the GPU and the model whose roofline to print")
	}
	if !strings.HasPrefix(spec, "roofline") {
		return fmt.Errorf("--latency %q: want roofline[:...]", spec)
	}
	lat, err := latency.Parse(spec, gpu, model, 1)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Roofline: %s, the simulator's --latency %s; no profile (not measured).\n\n", lat.Name(), spec)
	fmt.Fprintln(w, "| step | batch | tokens/seq | context/seq | measured ms | fitted ms | roofline ms | measured / roofline |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, n := range []int{512, 2048, 8192} {
		var st serving.Step
		st.Add(&serving.Seq{Req: &serving.Request{PromptTokens: n}}, n)
		fmt.Fprintf(w, "| prefill | 1 | %d | 0 | not measured | | %.3f | |\n", n, 1e3*lat.StepTime(st.Shape))
	}
	const context = 1024
	for _, b := range []int{1, 8, 32, 64, 128, 256} {
		var st serving.Step
		for range b {
			st.Add(&serving.Seq{Req: &serving.Request{PromptTokens: context}, NumComputed: context, NumOutput: 1}, 1)
		}
		fmt.Fprintf(w, "| decode | %d | 1 | %d | not measured | | %.3f | |\n", b, context, 1e3*lat.StepTime(st.Shape))
	}
	return nil
}

// compareProfile writes the table of profile p (read from file).
func compareProfile(w io.Writer, file string, p *latency.Profile, gpu, model, spec string) error {
	if len(p.Points) == 0 {
		return fmt.Errorf("%s records no measured steps (\"points\": profiles fitted to step logs have none, and those written before servelab profile recorded them); profile again", file)
	}
	if gpu == "" {
		gpu = p.GPU
	}
	if gpu == "" {
		return fmt.Errorf("--gpu: %s was not measured on a GPU the simulator's table knows; give the GPU whose roofline to compare with (%s)", file, strings.Join(latency.GPUNames(), ", "))
	}
	if model == "" {
		model = p.Model
	}
	if !strings.HasPrefix(spec, "roofline") {
		return fmt.Errorf("--latency %q: compare sets a profile beside the roofline; want roofline[:...]", spec)
	}
	lat, err := latency.Parse(spec, gpu, model, max(1, p.TensorParallelSize))
	if err != nil {
		return fmt.Errorf("the roofline of %s on %s: %w", model, gpu, err)
	}
	fitted := p.StepModel()

	type row struct {
		kind                    string
		batch, tokens, context  int
		measured, fit, roofline float64
	}
	var rows []row
	for _, s := range p.Points {
		sh := s.Shape
		r := row{measured: s.Seconds, fit: fitted.StepTime(sh), roofline: lat.StepTime(sh)}
		switch {
		case sh.PrefillSeqs == 1 && sh.DecodeSeqs == 0 && sh.ContextTokens == sh.PrefillTokens:
			r.kind, r.batch, r.tokens = "prefill", 1, sh.PrefillTokens
		case sh.PrefillSeqs == 0 && sh.DecodeSeqs > 0:
			// DecodeContextTokens counts each sequence's new token too.
			r.kind, r.batch, r.tokens, r.context = "decode", sh.DecodeSeqs, 1, sh.DecodeContextTokens/sh.DecodeSeqs-1
		default:
			continue // prefills after cached context, two prompts, mixed steps: in the fit, not the table
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b row) int {
		return cmp.Or(strings.Compare(b.kind, a.kind), cmp.Compare(a.context, b.context), cmp.Compare(a.batch, b.batch), cmp.Compare(a.tokens, b.tokens))
	})
	fmt.Fprintf(w, "Measured: %s (%s, %s).\n", cmp.Or(p.Machine, "?"), cmp.Or(p.Model, "?"), file)
	fmt.Fprintf(w, "Roofline: %s, the simulator's --latency %s.\n", lat.Name(), spec)
	if p.GPU != gpu {
		fmt.Fprintf(w, "The profile was measured on %s, not on %s: the ratio compares two machines.\n", cmp.Or(p.GPU, "a CPU"), gpu)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| step | batch | tokens/seq | context/seq | measured ms | fitted ms | roofline ms | measured / roofline |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	var tm, tr float64
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %d | %d | %d | %.3f | %.3f | %.3f | %.2f |\n", r.kind, r.batch, r.tokens, r.context,
			1e3*r.measured, 1e3*r.fit, 1e3*r.roofline, r.measured/r.roofline)
		tm += r.measured
		tr += r.roofline
	}
	if len(rows) > 0 {
		fmt.Fprintf(w, "| all %d above | | | | %.3f | | %.3f | %.2f |\n", len(rows), 1e3*tm, 1e3*tr, tm/tr)
	}
	return nil
}
