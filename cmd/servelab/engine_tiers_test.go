package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEngineTierFlagErrors: every bad --kv-tier, --kv-tier-dir and --kv-offloading-* use
// is refused at start with an error naming the flag.
func TestEngineTierFlagErrors(t *testing.T) {
	dir := synthTiny(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"disk without dir", []string{"--kv-tier", "disk:8"}, "--kv-tier disk: needs --kv-tier-dir DIR"},
		{"missing dir", []string{"--kv-tier", "disk:8", "--kv-tier-dir", filepath.Join(file, "x")}, "--kv-tier-dir: disk tier directory " + filepath.Join(file, "x")},
		{"dir is a file", []string{"--kv-tier", "disk:8", "--kv-tier-dir", file}, "not a directory"},
		{"dir too small", []string{"--kv-tier", "disk:200000000000", "--kv-tier-dir", t.TempDir()}, "the file system has"},
		{"dir without disk tier", []string{"--kv-tier", "cpu:8", "--kv-tier-dir", t.TempDir()}, "--kv-tier-dir without a disk tier"},
		{"preset", []string{"--kv-tier", "cpu:8:lru:pcie-gen5"}, "a preset prices the simulator's loads"},
		{"unknown medium", []string{"--kv-tier", "gpu:8"}, `kv_tiers[0].medium: unknown medium "gpu"`},
		{"bad blocks", []string{"--kv-tier", "cpu:many"}, `blocks "many" is not an integer`},
		{"no blocks", []string{"--kv-tier", "cpu:0"}, "kv_tiers[0].blocks: must be positive"},
		{"bad evict", []string{"--kv-tier", "cpu:8:nosuch"}, "kv_tiers[0].evict"},
		{"twice", []string{"--kv-tier", "cpu:8", "--kv-tier", "cpu:9"}, `"cpu" appears twice`},
		{"no prefix caching", []string{"--kv-tier", "cpu:8", "--enable-prefix-caching=false"}, "need prefix caching"},
		{"lmcache", []string{"--kv-offloading-size", "1", "--kv-offloading-backend", "lmcache"}, `--kv-offloading-backend "lmcache": only native`},
		{"negative size", []string{"--kv-offloading-size", "-1"}, "want a positive number of GiB"},
		{"tiny size", []string{"--kv-offloading-size", "1e-9"}, "less than one KV block"},
		{"size beyond memory", []string{"--kv-offloading-size", "1000000"}, "--kv-offloading-size 1e+06: host tier: "},
		{"cpu tier beyond memory", []string{"--kv-tier", "cpu:1000000000"}, "--kv-tier cpu:1000000000: host tier: 1000000000 blocks need"},
		{"size and cpu tier", []string{"--kv-offloading-size", "1", "--kv-tier", "cpu:8"}, "--kv-offloading-size already makes the cpu tier"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"engine", "--model", dir, "--port", "0", "--num-gpu-blocks-override", "16"}, tc.args...)
			_, err := run(t, args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestEngineServesFromTiers starts the engine with vLLM's --kv-offloading-size for the
// CPU tier and a disk tier under it, a GPU cache of 8 blocks, and sends prompts that push
// each other's blocks down the tiers and come back: /metrics counts the loads from both
// lower tiers, and times each of them.
func TestEngineServesFromTiers(t *testing.T) {
	dir := synthTiny(t)
	f := engineFlags{model: dir, host: "127.0.0.1", port: 0, blockSize: 16, prefixCaching: true,
		numBlocksOverride: 8, maxModelLen: 128, batchSpec: "vllm", evictSpec: "lru",
		tiers: tierFlags{specs: []string{"disk:64:fifo"}, dir: t.TempDir(), directIO: true,
			// 2 blocks of the tiny model's 8 KiB.
			offloadingSize: 2 * 8192.0 / (1 << 30), offloadingBackend: "native"}}
	r, err := f.start()
	if err != nil {
		t.Fatal(err)
	}
	go r.server.Serve(r.listener)
	url := "http://" + r.listener.Addr().String()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.server.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := r.close(); err != nil {
			t.Error(err)
		}
	}()
	if d := r.tiers.describe(r.backend.Cache.BlockBytes()); !strings.Contains(d, "CPU 2 blocks") || !strings.Contains(d, "DISK 64 blocks") {
		t.Errorf("startup line %q", d)
	}
	words := strings.Fields("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu")
	prompt := func(i int) string {
		var b strings.Builder
		for j := range 14 {
			fmt.Fprintf(&b, "%s %d ", words[(i*7+j*3)%len(words)], i*100+j)
		}
		return b.String()
	}
	complete := func(p string) int {
		body, _ := json.Marshal(map[string]any{"model": "tiny", "prompt": p, "max_tokens": 2, "temperature": 0})
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Usage struct {
				Details struct {
					Cached int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			}
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		json.NewDecoder(resp.Body).Decode(&out)
		return out.Usage.Details.Cached
	}
	// A prompt right after another finds some of its blocks still on the GPU, the next
	// ones in the 2-block CPU tier; after three others, on disk.
	cached := 0
	for _, i := range []int{0, 1, 0, 2, 3, 4, 0, 1, 2, 1} {
		cached += complete(prompt(i))
	}
	if cached == 0 {
		t.Error("no prompt token was cached")
	}
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	value := func(name, medium string) float64 {
		t.Helper()
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{[^}]*medium="` + medium + `"[^}]*\} (\S+)$`)
		m := re.FindSubmatch(metrics)
		if m == nil {
			t.Fatalf("no %s{medium=%q} in /metrics", name, medium)
		}
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, medium := range []string{"CPU", "DISK"} {
		loaded := value("servelab:kv_tier_loaded_blocks_total", medium)
		if loaded == 0 || value("servelab:kv_tier_offloaded_blocks_total", medium) == 0 {
			t.Errorf("%s: %v blocks loaded; want the prompts to come back from it", medium, loaded)
		}
		if n := value("servelab:kv_tier_load_seconds_count", medium); n != loaded {
			t.Errorf("%s: %v loads timed, %v loaded", medium, n, loaded)
		}
	}
}
