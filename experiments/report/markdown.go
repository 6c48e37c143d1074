package report

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"servelab/experiments"
)

// WriteMarkdown writes a GitHub-flavoured Markdown summary of an experiment for a pull
// request: what ran, the answer (the winner at each rate scale and by how much, idle
// instances, identical results), per rate scale its policies ranked by goodput and by p99
// TTFT (means over seeds ± 95% confidence half-widths) and each instance's share of the
// requests, with failed cells flagged and listed.
func WriteMarkdown(w io.Writer, exp *Experiment) error {
	b := bufio.NewWriter(w)
	fmt.Fprintf(b, "## Experiment `%s`\n\n", mdCode(exp.Name()))
	for _, f := range exp.facts() {
		fmt.Fprintf(b, "- %s: %s\n", f.Label, mdText(f.Value))
	}
	// The answer first: who wins and by how much, and what to beware of.
	fmt.Fprintf(b, "\n### Answer\n\n")
	for _, v := range exp.verdicts() {
		fmt.Fprintf(b, "- %s\n", mdText(v.Text))
	}
	for _, w := range exp.starvedWarnings() {
		fmt.Fprintf(b, "- ⚠ %s\n", mdText(w))
	}
	for _, n := range []string{exp.identicalNote(), exp.noPrefixNote()} {
		if n != "" {
			fmt.Fprintf(b, "- %s\n", mdText(n))
		}
	}
	groups := exp.rateGroups()
	for _, g := range groups {
		fmt.Fprintf(b, "\n### %s\n\n", rankedCaption(g.Rate, len(groups) > 1, "goodput"))
		writeMarkdownTable(b, g.ByGoodput)
		fmt.Fprintf(b, "\n### %s\n\n", rankedCaption(g.Rate, len(groups) > 1, "p99 TTFT"))
		writeMarkdownTable(b, g.ByP99TTFT)
	}
	for _, g := range groups {
		if hasClasses(g.ByGoodput) {
			fmt.Fprintf(b, "\n### %s\n\n", classCaption(g.Rate, len(groups) > 1))
			writeMarkdownClasses(b, g.ByGoodput)
		}
	}
	for _, g := range groups {
		if hasArms(g.ByGoodput) {
			fmt.Fprintf(b, "\n### %s\n\n", armCaption(g.Rate, len(groups) > 1))
			writeMarkdownArms(b, g.ByGoodput)
			fmt.Fprintf(b, "\n%s\n", armNote)
		}
	}
	for _, t := range exp.shareTables() {
		fmt.Fprintf(b, "\n### %s\n\n", shareCaption(t.Rate, len(groups) > 1))
		writeMarkdownShares(b, t)
	}
	fmt.Fprintf(b, "\nMeans over seeds ± 95%% confidence half-widths (Student's t)")
	if len(exp.shareTables()) > 0 {
		fmt.Fprintf(b, "; an instance's share of the requests is the mean over seeds (the lowest–highest seed)")
	}
	fmt.Fprintf(b, ".\n")
	if failed := exp.failedCells(); len(failed) > 0 {
		fmt.Fprintf(b, "\n### ⚠ Failed cells\n\n")
		for _, c := range failed {
			fmt.Fprintf(b, "- `%s`: %s\n", mdCode(c.ID), mdText(firstLine(c.Error)))
		}
	}
	return b.Flush()
}

func writeMarkdownTable(w io.Writer, policies []*experiments.PolicyResult) {
	head, rule := []string{"#", "policy"}, []string{"---:", "---"}
	columns := tableColumns(policies)
	for _, c := range columns {
		if c.Markdown {
			head, rule = append(head, c.Head), append(rule, "---:")
		}
	}
	fmt.Fprintf(w, "| %s |\n| %s |\n", strings.Join(head, " | "), strings.Join(rule, " | "))
	for i, p := range policies {
		row := []string{fmt.Sprint(i + 1), "`" + mdCode(p.Name()) + "`"}
		for _, c := range columns {
			if c.Markdown {
				row = append(row, mdText(c.Value(p)))
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
	}
}

func writeMarkdownShares(w io.Writer, t shareTable) {
	head, rule := []string{"policy"}, []string{"---"}
	for i := range t.Instances {
		head, rule = append(head, fmt.Sprintf("instance %d %%", i)), append(rule, "---:")
	}
	head, rule = append(head, "idle instances"), append(rule, "---")
	fmt.Fprintf(w, "| %s |\n| %s |\n", strings.Join(head, " | "), strings.Join(rule, " | "))
	for _, r := range t.Rows {
		row := []string{"`" + mdCode(r.Policy.Name()) + "`"}
		for i := range t.Instances {
			v := "–"
			if i < len(r.Shares) {
				v = r.Shares[i]
			}
			row = append(row, mdText(v))
		}
		warn := "none"
		if r.Warning != "" {
			warn = "⚠ " + mdText(r.Warning)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(append(row, warn), " | "))
	}
}

// mdCode makes s safe inside a code span in a table cell.
func mdCode(s string) string {
	return strings.NewReplacer("`", "'", "|", `\|`, "\n", " ").Replace(s)
}

// mdText makes s safe as table-cell or list text.
func mdText(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ", "<", "&lt;", "*", `\*`).Replace(s)
}

// hasClasses says whether any of the policies' requests have classes.
func hasClasses(policies []*experiments.PolicyResult) bool {
	for _, p := range policies {
		if len(p.Classes) > 0 {
			return true
		}
	}
	return false
}

func classCaption(rate float64, sweep bool) string {
	if sweep {
		return "Rate " + rateLabel(rate) + ": by class"
	}
	return "By class"
}

// classHeads are the by-class table's columns after the policy's.
var classHeads = []string{"class", "requests", "refused %", "goodput req/s", "median TTFT ms", "p99 TTFT ms", "p99 TPOT ms", "p99 E2EL ms"}

// classCells are one class's cells under classHeads.
func classCells(p *experiments.PolicyResult, c experiments.ClassResult) []string {
	f := func(s experiments.Stat, scale float64) string { return FormatStat(s, p.Seeds, scale) }
	return []string{c.Name, f(c.Requests, 1), f(c.RefusedShare, 100), f(c.RequestGoodput, 1),
		f(c.MedianTTFTMs, 1), f(c.P99TTFTMs, 1), f(c.P99TPOTMs, 1), f(c.P99E2ELMs, 1)}
}

// writeMarkdownClasses writes each policy's metrics by request class.
func writeMarkdownClasses(w io.Writer, policies []*experiments.PolicyResult) {
	fmt.Fprintf(w, "| policy | %s |\n", strings.Join(classHeads, " | "))
	fmt.Fprintf(w, "| --- | --- |%s\n", strings.Repeat(" ---: |", len(classHeads)-1))
	for _, p := range policies {
		for _, c := range p.Classes {
			cells := classCells(p, c)
			for i := range cells {
				cells[i] = mdText(cells[i])
			}
			fmt.Fprintf(w, "| `%s` | %s |\n", mdCode(p.Name()), strings.Join(cells, " | "))
		}
	}
}
