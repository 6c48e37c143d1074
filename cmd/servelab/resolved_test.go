package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"

	"servelab/metrics"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
)

// writeStepLog writes a small step log for profile --from-steps.
func writeStepLog(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "steps.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	model := latency.NewLinear(latency.LinearCoefficients{Intercept: 2e-3, PrefillToken: 5e-5, DecodeSeq: 3e-4})
	enc := json.NewEncoder(f)
	for i := 1; i <= 40; i++ {
		shape := serving.StepShape{PrefillTokens: (i * 37) % 300, DecodeSeqs: 1 + i%8, ContextTokens: 100 + i}
		if shape.PrefillTokens > 0 {
			shape.PrefillSeqs = 1
		}
		if err := enc.Encode(latency.Sample{Shape: shape, Seconds: model.StepTime(shape)}); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// parseFlags parses args into flags registered on a fresh command, as the CLI would.
func parseFlags(t *testing.T, register func(*cobra.Command), args []string) *cobra.Command {
	t.Helper()
	cmd := &cobra.Command{}
	register(cmd)
	if err := cmd.Flags().Parse(args); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// TestSimulatorRunsTheEnginesResolvedConfiguration is issue 11's item 1: an engine started
// from flags and the simulator built from its profile (servelab sim --latency profile:FILE,
// and fidelity's simulator) resolve every field alike; the old path, the simulator's
// defaults with their h100, does not.
func TestSimulatorRunsTheEnginesResolvedConfiguration(t *testing.T) {
	dir := synthTiny(t)
	steps := writeStepLog(t)
	tierDir := t.TempDir()
	for _, tc := range []struct {
		name  string
		flags []string
		// engineOnly are flags the engine needs besides, which profile has no use for.
		engineOnly []string
		// oldPathDiffers: the simulator's defaults run something else for these flags.
		oldPathDiffers bool
	}{
		{"defaults", nil, nil, true},
		{"every scheduling flag", []string{"--batch", "priority:long_prefill_token_threshold=64,chunked_prefill=false", "--max-num-seqs", "8",
			"--max-num-batched-tokens", "512", "--evict", "lfu", "--block-size", "32", "--enable-prefix-caching=false",
			"--num-gpu-blocks-override", "100", "--max-model-len", "256"}, nil, false},
		{"kv tiers", []string{"--kv-tier", "cpu:32:lfu", "--kv-tier", "disk:64:s3fifo"}, []string{"--kv-tier-dir", tierDir}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The real world: an engine started from the flags, asked over HTTP.
			var ef engineFlags
			parseFlags(t, ef.register, slices.Concat([]string{"--model", dir, "--port", "0", "--num-gpu-blocks-override", "300"}, tc.flags, tc.engineOnly))
			r, err := ef.start()
			if err != nil {
				t.Fatal(err)
			}
			go r.server.Serve(r.listener)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				r.server.Shutdown(ctx)
			})
			real, err := fetchEngineConfig(context.Background(), "http://"+r.listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(r.engine.Resolved(), real); diff != "" {
				t.Fatalf("/server_info differs from Engine.Resolved (-engine +served):\n%s", diff)
			}
			// The engine reports the tiers it was given (--kv-tier MEDIUM:...), top down.
			var media, want []string
			for _, t := range real.KVTiers {
				media = append(media, t.Medium)
			}
			for i, a := range tc.flags {
				if a == "--kv-tier" {
					want = append(want, strings.Split(tc.flags[i+1], ":")[0])
				}
			}
			if !slices.Equal(media, want) {
				t.Fatalf("/server_info reports KV tiers %+v, want the media %v", real.KVTiers, want)
			}

			// The profile of an engine with the same flags records it.
			prof := filepath.Join(t.TempDir(), "profile.json")
			args := append([]string{"profile", "--model", dir, "--from-steps", steps, "--out", prof, "--num-gpu-blocks-override", "300"}, tc.flags...)
			if out, err := run(t, args...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			p, err := latency.LoadProfile(prof)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(&real, p.Engine); diff != "" {
				t.Errorf("profile's engine (-real +recorded):\n%s", diff)
			}

			// servelab sim --latency profile:FILE.
			var sf simFlags
			cmd := parseFlags(t, sf.register, []string{"--latency", "profile:" + prof, "--instances", "2"})
			if err := sf.useProfileEngine(cmd.Flags(), io.Discard); err != nil {
				t.Fatal(err)
			}
			// fidelity's simulator.
			cf := clusterFlags{engines: 2, model: dir}
			for name, spec := range map[string]sim.ClusterSpec{
				"sim --latency profile:FILE": sf.cluster,
				"fidelity":                   fidelitySimSpec(&cf, "round-robin", prof, *p.Engine),
			} {
				cfg, err := spec.Build(metrics.SLO{})
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				for i := range spec.Instances {
					simulated, err := cfg.Resolved(i)
					if err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff(real, simulated); diff != "" {
						t.Errorf("%s, instance %d (-real +simulated):\n%s", name, i, diff)
					}
				}
			}

			// The old path: fidelity built its simulator from the defaults and the flags.
			old := sim.DefaultClusterSpec()
			folded := clusterFlags{batch: ef.batchSpec, maxNumSeqs: ef.maxNumSeqs, maxNumBatchedTokens: ef.maxNumBatchedTokens}
			old.Batch, old.Evict, old.BlockSize = folded.batchSpec(), ef.evictSpec, ef.blockSize
			old.NumGPUBlocksOverride, old.EnablePrefixCaching, old.MaxModelLen = real.NumGPUBlocks, ef.prefixCaching, real.MaxModelLen
			cfg, err := old.Build(metrics.SLO{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := cfg.Resolved(0)
			if err != nil {
				t.Fatal(err)
			}
			if differs := !cmp.Equal(got, real); differs != tc.oldPathDiffers {
				t.Errorf("old path resolves to %+v, engine to %+v; differ = %t, want %t", got, real, differs, tc.oldPathDiffers)
			}
		})
	}
}

// TestSimRefusesFlagsTheProfileDecides: with --latency profile:FILE the profile's engine
// configuration is what runs; a flag that would change it is an error naming the flag.
func TestSimRefusesFlagsTheProfileDecides(t *testing.T) {
	dir := synthTiny(t)
	prof := filepath.Join(t.TempDir(), "profile.json")
	if out, err := run(t, "profile", "--model", dir, "--from-steps", writeStepLog(t), "--out", prof, "--num-gpu-blocks-override", "300"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, flag := range profileEngineFlags {
		value := map[string]string{"batch": "priority", "evict": "lfu", "enable-prefix-caching": "false"}[flag]
		if value == "" {
			value = "32"
		}
		var sf simFlags
		cmd := parseFlags(t, sf.register, []string{"--latency", "profile:" + prof, "--" + flag, value})
		err := sf.useProfileEngine(cmd.Flags(), io.Discard)
		if err == nil || !containsAll(err.Error(), "--"+flag, "linear:"+prof) {
			t.Errorf("--%s %s with profile:FILE: err = %v", flag, value, err)
		}
	}

	// A profile of an engine with KV tiers decides the tiers too; one without leaves them
	// to --kv-tier.
	tiered := filepath.Join(t.TempDir(), "tiered.json")
	if out, err := run(t, "profile", "--model", dir, "--from-steps", writeStepLog(t), "--out", tiered, "--num-gpu-blocks-override", "300", "--kv-tier", "cpu:64"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, tc := range []struct {
		prof    string
		refused bool
	}{{tiered, true}, {prof, false}} {
		var sf simFlags
		cmd := parseFlags(t, sf.register, []string{"--latency", "profile:" + tc.prof, "--kv-tier", "cpu:8"})
		err := sf.useProfileEngine(cmd.Flags(), io.Discard)
		if refused := err != nil && containsAll(err.Error(), "--kv-tier", "linear:"+tc.prof); refused != tc.refused || (err != nil && !refused) {
			t.Errorf("--kv-tier with profile:%s: err = %v, want refused %t", tc.prof, err, tc.refused)
		}
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestSimWarnsWhenLinearRunsOtherLimits: --latency linear:FILE takes a profile's step times
// alone; when the simulator's defaults then run other batch limits than the profiled
// engine, it says so.
func TestSimWarnsWhenLinearRunsOtherLimits(t *testing.T) {
	dir := synthTiny(t)
	prof := filepath.Join(t.TempDir(), "profile.json")
	if out, err := run(t, "profile", "--model", dir, "--from-steps", writeStepLog(t), "--out", prof, "--num-gpu-blocks-override", "300"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, tc := range []struct {
		gpu  string
		warn bool
	}{{"h100", true}, {"a100", false}} {
		var sf simFlags
		cmd := parseFlags(t, sf.register, []string{"--latency", "linear:" + prof, "--gpu", tc.gpu})
		var warn strings.Builder
		if err := sf.useProfileEngine(cmd.Flags(), &warn); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(warn.String(), "max_num_batched_tokens=8192"); got != tc.warn {
			t.Errorf("--gpu %s: warned %t, want %t: %q", tc.gpu, got, tc.warn, warn.String())
		}
	}
}
