package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"servelab/experiments"
)

// smallExperiment runs two routers on 100 requests of the Azure slice into a directory.
func smallExperiment(t *testing.T) string {
	t.Helper()
	trace, err := filepath.Abs(azureSlice)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec, err := experiments.Parse([]byte("name: cli-report\nworkload: {trace: "+trace+", max_requests: 100, rate_scale: 4}\n"+
		"policies: {routers: [round-robin, least-request]}\nslo: {ttft_ms: 500}\n"), filepath.Join(dir, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if _, err := experiments.Run(context.Background(), spec, experiments.Options{Out: out}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReport(t *testing.T) {
	dir := smallExperiment(t)
	tests := []struct {
		name     string
		args     []string
		wantHTML bool
	}{
		{"markdown only", []string{"report", dir, "--md-only"}, false},
		{"both", []string{"report", dir}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(filepath.Join(dir, "report.html"))
			out, err := run(t, tt.args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			htmlPath, mdPath := filepath.Join(dir, "report.html"), filepath.Join(dir, "report.md")
			_, statErr := os.Stat(htmlPath)
			if (statErr == nil) != tt.wantHTML || strings.Contains(out, "wrote "+htmlPath+"\n") != tt.wantHTML {
				t.Errorf("report.html written: %v, want %v; output:\n%s", statErr == nil, tt.wantHTML, out)
			}
			md, err := os.ReadFile(mdPath)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "wrote "+mdPath+"\n\n"+string(md)) {
				t.Errorf("the output does not print report.md's path and contents:\n%s", out)
			}
			for _, want := range []string{"## Experiment `cli-report`", "### Ranked by goodput", "### Ranked by p99 TTFT"} {
				if !strings.Contains(string(md), want) {
					t.Errorf("report.md lacks %q:\n%s", want, md)
				}
			}
			// Two tables, each ranking both routers.
			rows := regexp.MustCompile("(?m)^\\| ([12]) \\| `(round-robin|least-request) / lru` \\|").FindAllStringSubmatch(string(md), -1)
			seen := map[string]int{}
			for _, r := range rows {
				seen[r[1]]++
				seen[r[2]]++
			}
			if len(rows) != 4 || seen["1"] != 2 || seen["2"] != 2 || seen["round-robin"] != 2 || seen["least-request"] != 2 {
				t.Errorf("ranked rows %v in:\n%s", rows, md)
			}
		})
	}
}

func TestReportNamesWhatIsMissing(t *testing.T) {
	_, err := run(t, "report", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "results.json") {
		t.Errorf("report of an empty directory: %v, want an error naming results.json", err)
	}
	if _, err := run(t, "report"); err == nil {
		t.Error("report without a directory succeeded")
	}
}
