package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"servelab/experiments/report"
)

func newReportCmd() *cobra.Command {
	var mdOnly bool
	cmd := &cobra.Command{
		Use:   "report DIR [--md-only]",
		Short: "Write an experiment directory's HTML report and Markdown summary",
		Long: `Read an experiment directory (results.json, spec.yaml and the cells' time series and
Parquet records) and write into it:

  report.html  a self-contained page: what ran; the policies ranked by goodput and by p99 TTFT
               (means over seeds ± 95% CI) at each rate scale; TTFT and TPOT CDFs; throughput,
               queue depth, prefix-cache hit rate and KV-cache usage over time; median and p99
               TTFT against load when the spec sweeps rate_scale. ECharts is inlined: the page
               loads nothing from the network.
  report.md    the ranked tables in GitHub-flavoured Markdown, to paste into a pull request.

It prints the files' paths and the Markdown. --md-only writes report.md alone, which needs
only results.json and spec.yaml.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			exp, err := report.Load(args[0])
			if err != nil {
				return err
			}
			htmlPath, mdPath, err := exp.WriteFiles(!mdOnly)
			if err != nil {
				return err
			}
			md, err := os.ReadFile(mdPath)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if htmlPath != "" {
				fmt.Fprintf(w, "wrote %s\n", htmlPath)
			}
			fmt.Fprintf(w, "wrote %s\n\n%s", mdPath, md)
			return nil
		},
	}
	cmd.Flags().BoolVar(&mdOnly, "md-only", false, "write report.md only")
	return cmd
}
