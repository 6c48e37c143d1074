package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"servelab/engine/backend"
	"servelab/engine/profile"
	"servelab/sim/latency"
)

func newProfileCmd() *cobra.Command {
	var (
		f         engineFlags
		out       string
		quick     bool
		reps      int
		fromSteps []string
		dev       profileDevice
	)
	cmd := &cobra.Command{
		Use:   "profile --model DIR --out FILE",
		Short: "Measure the engine's step time over batch shapes and fit the simulator's linear latency model",
		Long: `Time the real engine's forward pass over a grid of step shapes (prefill chunks with and without
cached context, decode batches over short and long contexts, mixed steps), fit the simulator's
linear step-time model to them (non-negative least squares, gonum) and write a profile that
'servelab sim --latency profile:FILE' loads. The fit reproduces the steps' total time exactly
and each class of step's (prefill-only, decode-only, mixed; short and long context per
sequence, split at the class's median) as closely as the linear form allows; the table it
prints, and the profile's "fit", give each class's measured and predicted time. The profile records the resolved configuration of
an engine started with the same flags (what its GET /server_info reports: batch and evict
specs with every parameter, block size, KV blocks, max model len, prefix caching), which a
simulation of it then runs.

With --from-steps the model is fitted instead to the steps an engine logged while it served
real traffic ('servelab engine --step-log FILE'): the step times the engine achieves under its
actual load, on its actual machine. --model and the KV flags still give the profile's block
size, KV blocks and context, as the engine that logged the steps ran with them.

On a GPU (--device cuda, with --dtype) the grid is the GPU's (--grid auto): prompts and
contexts to 8192 tokens and decode batches to 256, within the engine's limits, so give the
limits an engine serving on that GPU would have (--max-num-batched-tokens 8192
--max-num-seqs 256 --kv-cache-memory-bytes for the KV cache); the profile records the GPU
(its row of the simulator's GPU table, "gpu": "h200"), which 'servelab sim --latency
profile:FILE' then runs and prices. The measured steps are recorded too ("points"), which
'servelab profile compare' sets beside the simulator's roofline.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.model == "" || out == "" {
				return fmt.Errorf("--model and --out are required")
			}
			w := cmd.ErrOrStderr()
			progress := func(done, total int) {}
			if isTerminal(w) {
				progress = func(done, total int) { fmt.Fprintf(w, "\rprofiling: %d/%d shapes", done, total) }
			} else if f.device == "cuda" {
				// A GPU profile in a log (scripts/gpu-check.sh): a line a shape, so a run
				// stopped at its time limit still says how far it got and how fast.
				start := time.Now()
				progress = func(done, total int) {
					fmt.Fprintf(w, "profiled %d/%d shapes in %.1f s\n", done, total, time.Since(start).Seconds())
				}
			}
			var prof *latency.Profile
			var err error
			if len(fromSteps) > 0 {
				prof, err = profileFromSteps(f, fromSteps)
			} else {
				dev.read(cmd)
				prof, err = measureProfileOn(f, dev, quick, reps, progress, w)
			}
			if err != nil {
				return err
			}
			r2, mre := prof.R2, prof.MeanRelativeError
			if err := prof.Write(out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d shapes, R² %.4f, mean relative error %.1f%%\n", out, prof.Samples, r2, 100*mre)
			printFit(cmd.OutOrStdout(), prof.Fit)
			printGPUs(cmd.OutOrStdout(), prof.GPUs)
			return nil
		},
	}
	// The engine's flags that shape a step; the server's (--port, --api-key, ...) have no
	// meaning here and are left out of profile's flags and help.
	all := &cobra.Command{}
	f.register(all)
	all.Flags().VisitAll(func(fl *pflag.Flag) {
		if profileFlags[fl.Name] {
			cmd.Flags().AddFlag(fl)
		}
	})
	cmd.Flags().StringVar(&out, "out", "", "profile file to write (JSON)")
	cmd.Flags().BoolVar(&quick, "quick", false, "measure a small grid")
	cmd.Flags().IntVar(&reps, "repeats", 3, "timings per shape (the median is kept)")
	cmd.Flags().StringSliceVar(&fromSteps, "from-steps", nil, "fit to these step logs (servelab engine --step-log) instead of measuring")
	// Where the steps run: the engine's --device and --dtype, when it has them and they are
	// not copied above.
	for _, name := range []string{"device", "dtype"} {
		if fl := all.Flags().Lookup(name); fl != nil && cmd.Flags().Lookup(name) == nil {
			cmd.Flags().AddFlag(fl)
		}
	}
	cmd.Flags().StringVar(&dev.grid, "grid", "auto", "step shapes to measure: cpu (prompts and contexts to 1024 tokens, decode batches to 64), gpu (to 8192 tokens and 256 sequences), or auto (gpu with --device cuda)")
	if cmd.Flags().Lookup("dtype") == nil {
		// The engine's --dtype when it has one (copied above); else profile's own.
		cmd.Flags().StringVar(&dev.dtypeFlag, "dtype", "auto", "weights' compute type, vLLM's --dtype: auto (config.json's torch_dtype), bfloat16 or float32 (the CPU computes in float32)")
	}
	cmd.AddCommand(newProfileCompareCmd())
	return cmd
}

// profileDevice is where profile measures: the engine's --device and --dtype, and --grid.
type profileDevice struct {
	device, dtype, grid string
	dtypeFlag           string
}

// read takes --device and --dtype from the command's flags, whichever command defines them.
func (d *profileDevice) read(cmd *cobra.Command) {
	if fl := cmd.Flags().Lookup("device"); fl != nil {
		d.device = fl.Value.String()
	}
	if fl := cmd.Flags().Lookup("dtype"); fl != nil {
		d.dtype = fl.Value.String()
	}
}

// gpuGrid resolves --grid.
func (d profileDevice) gpuGrid() (bool, error) {
	switch d.grid {
	case "", "auto":
		return d.device == "cuda", nil
	case "cpu":
		return false, nil
	case "gpu":
		return true, nil
	}
	return false, fmt.Errorf("--grid %q: want auto, cpu or gpu", d.grid)
}

// profileFlags are the engine flags measureProfile reads.
var profileFlags = map[string]bool{
	"model": true, "block-size": true, "max-model-len": true, "kv-cache-memory-bytes": true,
	"num-gpu-blocks-override": true, "max-num-seqs": true, "max-num-batched-tokens": true,
	"batch": true, "threads": true,
	// Recorded in the profile's engine configuration, which a simulation of it runs.
	"evict": true, "enable-prefix-caching": true,
	"kv-tier": true, "kv-offloading-size": true, "kv-offloading-backend": true,
	// Where the steps run; on a GPU the profile records its telemetry ("gpus").
	"device": true, "gpu-telemetry-interval": true,
}

// measureProfile times the engine flags' model over step shapes and fits the simulator's
// linear step-time model, on the CPU grid (fidelity's profile of the CPU engine).
func measureProfile(f engineFlags, quick bool, reps int, progress func(done, total int)) (*latency.Profile, error) {
	return measureProfileOn(f, profileDevice{}, quick, reps, progress, io.Discard)
}

// measureProfileOn is measureProfile on dev's grid (the device is the engine flags'); warnings go to warn.
func measureProfileOn(f engineFlags, dev profileDevice, quick bool, reps int, progress func(done, total int), warn io.Writer) (*latency.Profile, error) {
	dev.device = f.device
	gpuGrid, err := dev.gpuGrid()
	if err != nil {
		return nil, err
	}
	if err := f.checkDevice(); err != nil {
		return nil, err
	}
	bp, err := f.batchPolicy()
	if err != nil {
		return nil, err
	}
	if err := f.checkDevice(); err != nil {
		return nil, err
	}
	b, err := backend.Load(f.backendOptions(bp))
	if err != nil {
		return nil, err
	}
	defer b.Close()
	limits := bp.Limits()
	var points []profile.Point
	// On a GPU, its telemetry is recorded over the measurement.
	gpus, err := f.measureWithGPUTelemetry(func() (err error) {
		points, err = profile.Measure(b.NewExecutor(), profile.Config{
			MaxModelLen: b.MaxModelLen, NumBlocks: b.NumBlocks, BlockSize: b.BlockSize,
			MaxNumBatchedTokens: limits.MaxNumBatchedTokens, MaxNumSeqs: limits.MaxNumSeqs,
			Repeats: reps, Quick: quick, GPU: gpuGrid,
			Progress: progress,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	samples := make([]latency.Sample, len(points))
	for i, p := range points {
		samples[i] = latency.Sample{Shape: p.Shape, Seconds: p.Seconds}
	}
	machine := fmt.Sprintf("CPU %s (servelab engine)", b.Device.Name)
	gpu := ""
	if b.Device.Device == "cuda" {
		machine = fmt.Sprintf("GPU %s, %s weights (servelab engine --device cuda)", b.Device.Name, b.Device.DType)
		if g, err := latency.LookupGPUByDeviceName(b.Device.Name); err == nil {
			gpu = g.Name
		} else {
			fmt.Fprintf(warn, "warning: %v; the profile records no \"gpu\", so a simulation of it prices the --gpu it is given\n", err)
		}
	}
	p, err := fitProfile(f, machine, b, samples)
	if err != nil {
		return nil, err
	}
	p.GPU, p.Points, p.GPUs = gpu, samples, gpus
	return p, nil
}

// fitProfile fits the linear step-time model to samples measured on machine and records
// the resolved configuration of the engine the flags start over backend b.
func fitProfile(f engineFlags, machine string, b *backend.Backend, samples []latency.Sample) (*latency.Profile, error) {
	ec, err := f.resolved(b)
	if err != nil {
		return nil, err
	}
	coef, r2, err := latency.FitLinear(samples)
	if err != nil {
		return nil, fmt.Errorf("fitting %d steps: %w", len(samples), err)
	}
	fit := latency.Fit(coef, samples)
	return &latency.Profile{
		Model:             f.model,
		Engine:            &ec,
		Machine:           machine,
		BlockSize:         b.BlockSize,
		NumGPUBlocks:      b.NumBlocks,
		MaxModelLen:       b.MaxModelLen,
		KVBytesPerToken:   float64(b.Cache.BlockBytes()) / float64(b.BlockSize),
		Coefficients:      coef,
		Samples:           len(samples),
		R2:                r2,
		MeanRelativeError: fit.MeanRelativeError,
		Fit:               &fit,
	}, nil
}

// printFit writes how well a profile's coefficients reproduce the steps they were fitted
// to: the total, and each class of step (batch and context per sequence).
func printFit(w io.Writer, fit *latency.FitReport) {
	if fit == nil {
		return
	}
	fmt.Fprintf(w, "%-14s %6s %13s %11s %12s %8s\n", "steps", "count", "context/seq", "measured s", "predicted s", "error")
	for _, c := range fit.Classes {
		fmt.Fprintf(w, "%-14s %6d %6.0f-%-6.0f %11.4f %12.4f %+7.1f%%\n", c.Class, c.Steps, c.MinContext, c.MaxContext,
			c.MeasuredSeconds, c.PredictedSeconds, 100*c.RelativeError())
	}
	fmt.Fprintf(w, "%-14s %6d %13s %11.4f %12.4f %+7.1f%%\n", "all", fit.Steps, "", fit.MeasuredSeconds, fit.PredictedSeconds, 100*fit.RelativeError())
}

// profileFromSteps fits the linear step-time model to the steps in step logs written by
// 'servelab engine --step-log'; the engine flags give the KV cache the profile records.
func profileFromSteps(f engineFlags, files []string) (*latency.Profile, error) {
	var samples []latency.Sample
	for _, file := range files {
		s, err := readSteps(file)
		if err != nil {
			return nil, err
		}
		samples = append(samples, s...)
	}
	if len(samples) == 0 {
		return nil, fmt.Errorf("--from-steps: no steps in %s", strings.Join(files, ", "))
	}
	// The step logs are timings already measured: the model is loaded (one thread on the
	// CPU) only for the KV cache's shape, on the --device the engine ran with.
	o := f.backendOptions(nil)
	o.Threads = 1
	b, err := backend.Load(o)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	p, err := fitProfile(f, "the machine of the step logs "+strings.Join(files, ", ")+" (servelab engine --step-log)", b, samples)
	if err != nil {
		return nil, fmt.Errorf("--from-steps: %w", err)
	}
	return p, nil
}

// isTerminal reports whether w is a terminal, where progress lines belong.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
