package main

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"servelab/metrics"
)

// realLink names the "link" a local cluster's KV crosses in a summary's disaggregation.
const realLink = "loopback-http"

// addMeasuredPDTiers fills in what a simulated summary reports of disaggregation and KV
// tiers, from a local cluster's /metrics after its run (its engines and router started
// fresh, so counters are the run's): the router's llm-d decisions
// (llm_d_inference_scheduler_disagg_decision_total{decision_type="prefill-decode"}) and
// the decode engines' measured pull time (servelab:kv_transfer_pull_seconds, the pull
// and writing the blocks: what the simulator's link charges); each tier's hit, offloaded
// and loaded blocks summed over engines (servelab:kv_tier_*), its hit rate the share of
// the prompt tokens looked up (vllm:prefix_cache_queries_total) as the simulator counts
// it. pd and tiers say which to fill.
func addMeasuredPDTiers(ctx context.Context, routerURL string, engines []string, blockSize int, pd, tiers bool, sum *metrics.Summary) error {
	if !pd && !tiers {
		return nil
	}
	pages := make([]map[string]*dto.MetricFamily, len(engines))
	for i, ep := range engines {
		page, err := readMetricsPage(ctx, ep+"/metrics")
		if err != nil {
			return err
		}
		pages[i] = page
	}
	if pd {
		page, err := readMetricsPage(ctx, routerURL+"/metrics")
		if err != nil {
			return err
		}
		d := &metrics.Disaggregation{Link: realLink,
			Requests: int64(familySum(page["llm_d_inference_scheduler_disagg_decision_total"], "decision_type", "prefill-decode"))}
		var seconds, pulls float64
		for _, p := range pages {
			if f := p["servelab:kv_transfer_pull_seconds"]; f != nil {
				for _, m := range f.GetMetric() {
					seconds += m.GetHistogram().GetSampleSum()
					pulls += float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
		if pulls > 0 {
			d.MeanKVTransfer = seconds / pulls
		}
		sum.Disaggregation = d
	}
	if tiers {
		var queries float64
		byMedium := map[string]*metrics.KVTierSummary{}
		var order []string
		for _, p := range pages {
			queries += familySum(p["vllm:prefix_cache_queries_total"], "", "")
			for _, c := range []struct {
				name string
				add  func(*metrics.KVTierSummary, int64)
			}{
				{"servelab:kv_tier_hit_blocks_total", func(t *metrics.KVTierSummary, v int64) { t.HitBlocks += v }},
				{"servelab:kv_tier_offloaded_blocks_total", func(t *metrics.KVTierSummary, v int64) { t.OffloadedBlocks += v }},
				{"servelab:kv_tier_loaded_blocks_total", func(t *metrics.KVTierSummary, v int64) { t.LoadedBlocks += v }},
			} {
				f := p[c.name]
				if f == nil {
					continue
				}
				for _, m := range f.GetMetric() {
					medium := labelValue(m, "medium")
					t := byMedium[medium]
					if t == nil {
						t = &metrics.KVTierSummary{Medium: medium}
						byMedium[medium] = t
						order = append(order, medium)
					}
					c.add(t, int64(metricValue(m)))
				}
			}
		}
		for _, p := range pages {
			if f := p["servelab:kv_tier_load_seconds"]; f != nil {
				for _, m := range f.GetMetric() {
					if t := byMedium[labelValue(m, "medium")]; t != nil {
						t.LoadSeconds += m.GetHistogram().GetSampleSum()
					}
				}
			}
		}
		if len(order) == 0 {
			return fmt.Errorf("the engines report no servelab:kv_tier_* metrics; were they started with --kv-tier?")
		}
		// Top down, as the simulator lists them.
		rank := map[string]int{"GPU": 0, "CPU": 1, "DISK": 2}
		sort.SliceStable(order, func(i, j int) bool { return rank[order[i]] < rank[order[j]] })
		sum.KVTiers = nil
		for _, medium := range order {
			t := byMedium[medium]
			if queries > 0 {
				t.PrefixCacheHitRate = float64(t.HitBlocks) * float64(blockSize) / queries
			}
			sum.KVTiers = append(sum.KVTiers, *t)
		}
	}
	return nil
}

// readMetricsPage fetches and parses a Prometheus text page.
func readMetricsPage(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	page, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return page, nil
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return strings.ToUpper(l.GetValue())
		}
	}
	return ""
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

// familySum adds up a family's samples whose label (if given) has value.
func familySum(f *dto.MetricFamily, label, value string) float64 {
	if f == nil {
		return 0
	}
	sum := 0.0
	for _, m := range f.GetMetric() {
		if label != "" && !strings.EqualFold(labelValue(m, label), value) {
			continue
		}
		sum += metricValue(m)
	}
	return sum
}
