package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
	"servelab/serving"
	"servelab/sim/latency"
)

// TestFidelityEngineConfigIsWhatItsEngineRuns: for every compared batch and evict policy,
// the configuration fidelity simulates and checks its engines against
// (fidelityEngineConfig) is what an engine started with the run's flags (the arguments
// the run's cluster gives it) reports on GET /server_info, and what the simulator built
// from it resolves; and the check refuses an engine running the profiled configuration.
func TestFidelityEngineConfigIsWhatItsEngineRuns(t *testing.T) {
	dir := synthTiny(t)
	// The profiled engine: the defaults (vllm, lru).
	prof := filepath.Join(t.TempDir(), "profile.json")
	if out, err := run(t, "profile", "--model", dir, "--from-steps", writeStepLog(t), "--out", prof, "--num-gpu-blocks-override", "300"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	p, err := latency.LoadProfile(prof)
	if err != nil {
		t.Fatal(err)
	}
	base := *p.Engine
	for _, tc := range []struct {
		name, batch, evict    string
		maxNumSeqs, maxTokens int
	}{
		{"the profiled policies", "vllm", "lru", 0, 0},
		{"static", "static", "lru", 0, 0},
		{"a smaller step budget and fifo", "vllm:max_num_batched_tokens=256", "fifo", 0, 0},
		{"priority with the limit flags folded in", "priority:chunked_prefill=false", "lfu", 8, 512},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := clusterFlags{engines: 1, model: dir, blockSize: 16, prefixCaching: true, numBlocks: base.NumGPUBlocks,
				maxNumSeqs: tc.maxNumSeqs, maxNumBatchedTokens: tc.maxTokens, threads: 1}
			cfg := fidelityConfig{Router: "round-robin", Batch: tc.batch, Evict: tc.evict}
			want, err := fidelityEngineConfig(&c, base, tc.batch, tc.evict)
			if err != nil {
				t.Fatal(err)
			}
			if differs := want.Batch != base.Batch || want.Evict != base.Evict; differs != (tc.name != "the profiled policies") {
				t.Errorf("run config %+v vs profiled %+v: differs %t", want, base, differs)
			}

			// The real world: an engine parsed from the arguments the run's cluster starts it with.
			rc := cfg.withPolicies(c)
			opts, err := rc.options(io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var ef engineFlags
			parseFlags(t, ef.register, append(append([]string{}, opts.EngineArgs...), "--port", "0"))
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
			url := "http://" + r.listener.Addr().String()
			reported, err := checkRunEngines(context.Background(), []string{url}, want)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]serving.EngineConfig{want}, reported); diff != "" {
				t.Errorf("reported (-want +got):\n%s", diff)
			}
			if !cmp.Equal(want, base) {
				if _, err := checkRunEngines(context.Background(), []string{url}, base); err == nil {
					t.Errorf("an engine running %+v passed the check against the profiled %+v", want, base)
				}
			}

			// The simulated world: what fidelity builds for the run resolves to the same.
			cfgSim, err := fidelitySimSpec(&c, cfg.Router, prof, want).Build(metrics.SLO{})
			if err != nil {
				t.Fatal(err)
			}
			simulated, err := cfgSim.Resolved(0)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, simulated); diff != "" {
				t.Errorf("simulated (-run +simulator):\n%s", diff)
			}
		})
	}
}

func TestFidelityCompared(t *testing.T) {
	for _, tc := range []struct {
		name            string
		engines         int
		routers         []string
		batches, evicts []string
		want            []string // label|router|batch|evict
		err             string
	}{
		{"one engine, defaults", 1, []string{"round-robin"}, nil, nil,
			[]string{"vllm|round-robin|vllm|lru", "static|round-robin|static|lru",
				"vllm:max_num_batched_tokens=256|round-robin|vllm:max_num_batched_tokens=256|lru"}, ""},
		{"two engines, defaults", 2, []string{"round-robin", "least-request"}, nil, nil,
			[]string{"round-robin|round-robin|vllm|lru", "least-request|least-request|vllm|lru"}, ""},
		{"one engine, one policy", 1, []string{"round-robin"}, []string{"vllm"}, nil,
			[]string{"round-robin|round-robin|vllm|lru"}, ""},
		{"evict policies", 1, []string{"round-robin"}, []string{"vllm"}, []string{"lru", "fifo"},
			[]string{"evict lru|round-robin|vllm|lru", "evict fifo|round-robin|vllm|fifo"}, ""},
		{"routers by batch", 2, []string{"round-robin", "least-request"}, []string{"vllm", "static"}, nil,
			[]string{"round-robin vllm|round-robin|vllm|lru", "round-robin static|round-robin|static|lru",
				"least-request vllm|least-request|vllm|lru", "least-request static|least-request|static|lru"}, ""},
		{"unknown batch policy", 1, []string{"round-robin"}, []string{"vllm", "sarathi"}, nil, nil, `--batch "sarathi"`},
		{"bad parameter", 1, []string{"round-robin"}, []string{"vllm:max_num_seqs=0"}, nil, nil, "max_num_seqs"},
		{"unknown evict policy", 1, []string{"round-robin"}, nil, []string{"mru"}, nil, `--evict "mru"`},
		{"duplicate", 1, []string{"round-robin"}, []string{"static", "static"}, nil, nil, `--batch "static" given twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := clusterFlags{engines: tc.engines, blockSize: 16}
			p := fidelityPolicies{batches: tc.batches, evicts: tc.evicts}
			got, err := p.compared(&c, tc.routers)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var rows []string
			for _, g := range got {
				rows = append(rows, strings.Join([]string{g.Label, g.Router, g.Batch, g.Evict}, "|"))
			}
			if diff := cmp.Diff(tc.want, rows); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// --batch and --evict repeat in fidelity only; up keeps one of each.
func TestFidelityBatchFlagRepeats(t *testing.T) {
	cmd := newFidelityCmd()
	if err := cmd.Flags().Parse([]string{"--batch", "vllm", "--batch", "static:max_num_seqs=4", "--evict", "fifo"}); err != nil {
		t.Fatal(err)
	}
	fl := cmd.Flags()
	for _, name := range []string{"batch", "evict"} {
		if typ := fl.Lookup(name).Value.Type(); typ != "stringArray" {
			t.Errorf("fidelity --%s is a %s", name, typ)
		}
	}
	if got := fl.Lookup("batch").Value.String(); got != "[vllm,static:max_num_seqs=4]" {
		t.Errorf("--batch %s", got)
	}
	up := newUpCmd()
	if err := up.Flags().Parse([]string{"--batch", "vllm", "--batch", "static"}); err != nil {
		t.Fatal(err)
	}
	if got := up.Flags().Lookup("batch").Value.String(); got != "static" {
		t.Errorf("up --batch %q, want the last one given", got)
	}
}

// fidelity --engines 1 compares batch policies as --engines 2 compares routers: a run per
// policy, each repeat's engine reporting the run's configuration, and the rankings.
func TestFidelityOneEngineComparesBatchPolicies(t *testing.T) {
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	dir := synthTiny(t)
	out := filepath.Join(t.TempDir(), "fid")
	stdout, err := run(t, "fidelity", "--trace", mooncakeSlice, "--max-requests", "20", "--engines", "1", "--model", dir,
		"--quick", "--allow-busy", "--busy-wait", "0", "--repeats", "1", "--capacity-burst", "500ms", "--capacity-repeats", "2",
		"--calibrate=false", "--batch", "vllm", "--batch", "static", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	rep := readFidelityReport(t, out)
	if len(rep.Runs) != 2 {
		t.Fatalf("%d runs, want one per batch policy", len(rep.Runs))
	}
	for i, want := range []string{"vllm", "static"} {
		run := rep.Runs[i]
		if run.Label != want || run.Batch != want || run.Router != "round-robin" || run.Evict != "lru" {
			t.Errorf("run %d: label %q, router %q, batch %q, evict %q; want %s", i, run.Label, run.Router, run.Batch, run.Evict, want)
		}
		if !strings.HasPrefix(run.Engine.Batch, want+":") || !strings.Contains(run.Engine.Batch, "max_num_batched_tokens=2048") {
			t.Errorf("run %d: engine batch %q, want %s resolved", i, run.Engine.Batch, want)
		}
		if len(run.Repeats) != 1 {
			t.Fatalf("run %d: %d repeats", i, len(run.Repeats))
		}
		for k, r := range run.Repeats {
			if diff := cmp.Diff([]serving.EngineConfig{run.Engine}, r.ServerInfo); diff != "" {
				t.Errorf("run %d repeat %d: /server_info (-run +reported):\n%s", i, k, diff)
			}
			if r.Measured.Completed != 20 || r.Predicted.Completed != 20 {
				t.Errorf("run %d repeat %d: completed %d measured, %d predicted", i, k, r.Measured.Completed, r.Predicted.Completed)
			}
		}
	}
	if len(rep.Rankings) != 3 || rep.Rankings[0].A != "vllm" || rep.Rankings[0].B != "static" {
		t.Errorf("rankings %+v, want vllm vs static by 3 metrics", rep.Rankings)
	}
	for _, want := range []string{"= vllm =", "= static =", "engines run batch static:", "Ranking by mean TTFT", "vllm vs static", "Decided: "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
}

// TestCalibrationConfigs: fidelity calibrates on every compared configuration up to
// three, else on the first, the middle and the last, so the model is fitted to the batch
// shapes of both ends of the comparison.
func TestCalibrationConfigs(t *testing.T) {
	labels := func(cs []fidelityConfig) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Label)
		}
		return out
	}
	configs := func(names ...string) []fidelityConfig {
		var out []fidelityConfig
		for _, n := range names {
			out = append(out, fidelityConfig{Router: n, Label: n})
		}
		return out
	}
	for _, tt := range []struct {
		in, want []string
	}{
		{[]string{"round-robin"}, []string{"round-robin"}},
		{[]string{"round-robin", "least-request", "prefix-affinity"}, []string{"round-robin", "least-request", "prefix-affinity"}},
		{[]string{"round-robin", "least-request", "prefix-affinity", "weighted"}, []string{"round-robin", "prefix-affinity", "weighted"}},
		{[]string{"a", "b", "c", "d", "e"}, []string{"a", "c", "e"}},
	} {
		if diff := cmp.Diff(tt.want, labels(calibrationConfigs(configs(tt.in...)))); diff != "" {
			t.Errorf("calibrationConfigs(%v) (-want +got):\n%s", tt.in, diff)
		}
	}
}
