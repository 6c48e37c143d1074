package report

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"servelab/experiments"
)

// Every shipped simulator example runs, cut to its first requests and one seed but with
// its whole matrix of clusters, rates and policies, and reports: a spec or report change
// that breaks one fails here rather than in `make run` or a reader's hands. The shipped
// reports (examples/reports/) come from the full runs their specs' comments give.
func TestSimExamplesRunAndReport(t *testing.T) {
	paths, err := filepath.Glob("../examples/*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	// What each example's report must show beyond the ranked tables every report has.
	wantColumns := map[string][]string{
		"pd-reference.yaml":  {"disaggregated %", "goodput/$", "cost $", "p99 TPOT ms", "median TTFT ms"},
		"kv-tiers.yaml":      {"GPU hit %", "CPU hit %", "DISK hit %", "median TTFT ms"},
		"pd-disagg.yaml":     {"disaggregated %"},
		"autoscale-day.yaml": {"SLO attained %", "mean instances", "GPU-hours", "goodput/$"},
		// By class: the workload's requests have objectives.
		"priority-classes.yaml": {"refused %", "p99 E2EL ms"},
		// A/B arms side by side: its clusters split requests between two routers.
		"ab-routers.yaml": {"arm", "arm's router", "requests", "median TPOT ms", "prefix hit %"},
	}
	ran := 0
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			s, err := experiments.Load(p)
			if err != nil {
				if strings.Contains(err.Error(), "cluster.model") {
					t.Skipf("needs its model (make run makes it): %v", err)
				}
				t.Fatal(err)
			}
			if s.World != "sim" {
				t.Skipf("world %s", s.World)
			}
			ran++
			if s.Workload.MaxRequests == 0 || s.Workload.MaxRequests > 60 {
				s.Workload.MaxRequests = 60
			}
			s.Seeds = s.Seeds[:1]
			out := t.TempDir()
			res, err := experiments.Run(context.Background(), s, experiments.Options{Out: out})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Cells) != len(s.Cells()) {
				t.Errorf("%d cells ran, want the matrix's %d", len(res.Cells), len(s.Cells()))
			}
			e, err := Load(out)
			if err != nil {
				t.Fatal(err)
			}
			md := renderMarkdown(t, e)
			for _, pr := range res.Policies {
				if !strings.Contains(md, "`"+mdCode(pr.Name())+"`") {
					t.Errorf("the report has no row for %s", pr.Name())
				}
			}
			for _, c := range s.Clusters {
				if !slices.ContainsFunc(res.Policies, func(pr experiments.PolicyResult) bool { return pr.Cluster == c.Name }) {
					t.Errorf("cluster %s has no results", c.Name)
				}
			}
			for _, col := range wantColumns[filepath.Base(p)] {
				if !strings.Contains(md, "| "+col+" |") {
					t.Errorf("the report has no %q column", col)
				}
			}
			if filepath.Base(p) == "autoscale-day.yaml" && !strings.Contains(md, "Autoscaled autoscaled-rps") {
				t.Errorf("the answer does not weigh the autoscaled cluster against the fixed ones:\n%s", md)
			}
			html := renderHTML(t, e)
			if filepath.Base(p) == "priority-classes.yaml" && (!strings.Contains(html, `<table class="classes"`) || !strings.Contains(html, "<td>sheddable</td>")) {
				t.Error("the HTML report has no by-class table")
			}
			if filepath.Base(p) == "ab-routers.yaml" {
				for _, pr := range res.Policies {
					if n := len(pr.Arms); pr.Cluster == "slo-aware-20" && n != 2 || pr.Cluster == "slo-aware-100" && n != 1 {
						t.Errorf("%s: %d arms", pr.Name(), n)
					}
				}
				for _, want := range []string{"| `slo-aware-20 · ../../examples/router/llm-d-default.yaml / lru` | a | `../../examples/router/llm-d-default.yaml` |",
					"| `slo-aware-20 · ../../examples/router/llm-d-default.yaml / lru` | b | `weighted:predicted-latency=1,prefix=0,queue=0,kv=0,headroom_strategy=most` |"} {
					if !strings.Contains(md, want) {
						t.Errorf("the report has no row %q:\n%s", want, md)
					}
				}
				if !strings.Contains(html, `<table class="arms"`) || !strings.Contains(html, "<td>weighted:predicted-latency=1,prefix=0,queue=0,kv=0,headroom_strategy=most</td>") {
					t.Error("the HTML report has no A/B arms table")
				}
			}
		})
	}
	if ran < 4 {
		t.Errorf("%d simulator examples ran, want at least 4", ran)
	}
}
