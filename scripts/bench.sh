#!/usr/bin/env bash
# make bench: measures the simulator end to end and its hot paths, and writes
# docs/BENCHMARKS.md with the machine, the commands and medians.
#
# Optional peer: set BLIS_BIN to a built BLIS binary and BLIS_DIR to its checkout
# (github.com/inference-sim/inference-sim; BLIS_REV names its commit when BLIS_DIR is a
# source snapshot rather than a git checkout) to run it side by side on the same workload;
# BLIS_FULL=1 adds its 100,000-request run (about 7 minutes here). LLAMA2C_DIR, a
# github.com/karpathy/llama2.c checkout, adds run.c beside the real engine.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=bin/servelab
SHARED=${SHARED:-../shared}
REPS=${REPS:-5}
OUT=docs/BENCHMARKS.md
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time (Debian package 'time') to measure peak RSS" >&2
  (apt-get update -qq && apt-get install -y -qq time) >/dev/null
fi

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# measure CMD...: runs the command REPS times; prints "median_wall_s max_rss_mb
# median_cpu_s" (CPU: user plus system time of the command and its children; on a busy
# machine it moves less than wall time).
measure() {
  local reps=$1; shift
  local walls=() cpus=() rss=0
  for _ in $(seq "$reps"); do
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" "$@" >"$WORK/stdout"
    read -r wall kb user sys <"$WORK/time"
    walls+=("$wall")
    cpus+=("$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')")
    [ "$kb" -gt "$rss" ] && rss=$kb
  done
  echo "$(printf '%s\n' "${walls[@]}" | median) $((rss / 1024)) $(printf '%s\n' "${cpus[@]}" | median)"
}

# row NAME REPS CMD...: measures CMD and adds it to the end-to-end table; the figures are
# also kept in $WORK/rows (name, wall, CPU) for the ratios below.
row() {
  local name=$1 reps=$2; shift 2
  read -r wall rss cpu < <(measure "$reps" "$@")
  local shown=${*}
  echo "| $name | \`${shown//$WORK/\$WORK}\` | $reps | $wall | $cpu | $rss |" >>"$WORK/e2e.md"
  printf '%s\t%s\t%s\n' "$name" "$wall" "$cpu" >>"$WORK/rows"
  echo "$name: median ${wall}s wall, ${cpu}s CPU, peak ${rss} MB" >&2
}

# ratio A B: B's median wall and CPU time over A's, from $WORK/rows.
ratio() {
  awk -F'\t' -v a="$1" -v b="$2" '$1 == a {aw = $2; ac = $3} $1 == b {bw = $2; bc = $3}
    END {if (aw > 0 && ac > 0 && bw != "") printf "| %s | %s | %.0fx | %.0fx |\n", b, a, bw / aw, bc / ac}' "$WORK/rows"
}

: >"$WORK/e2e.md"
: >"$WORK/rows"
: >"$WORK/ratio.md"
AZURE=$SHARED/traces/azure_llm_2023_conv.csv
[ -f "$AZURE" ] || AZURE=examples/traces/azure_conv_3000.csv

row "Azure conv trace, 8 x H100, Llama-3.1-8B" "$REPS" \
  $BIN sim --trace "$AZURE" --instances 8 --gpu h100 --model llama-3.1-8b --router least-request --json

$BIN trace synth --requests 1000000 --rate 1000 --input-mean 1024 --output-mean 256 --prefix-groups 64 --seed 1 --out "$WORK/synth_1m.jsonl"
for router in least-request weighted; do
  row "1,000,000 synthetic requests, 64 x H100, Llama-3.1-8B, $router" 1 \
    $BIN sim --trace "$WORK/synth_1m.jsonl" --instances 64 --gpu h100 --model llama-3.1-8b --router $router --json
done
# The same workload disaggregated (issue 13's target: under 90 s): 16 prefill + 48 decode
# instances, llm-d's pd-profile-handler with least-request in both profiles and the
# prefix-based decider reading the decode instances' KV-event index, prompt KV over RDMA.
row "1,000,000 synthetic requests, 16 prefill + 48 decode x H100, Llama-3.1-8B, least-request (disaggregated)" 1 \
  $BIN sim --trace "$WORK/synth_1m.jsonl" --pool prefill:prefill:16:h100 --pool decode:decode:48:h100 --model llama-3.1-8b --router least-request --json

# An experiment end to end, report included (issue 5's target: 3 routers x 2 evictors x 3
# seeds on the Azure conv trace in under 15 s).
row "Experiment azure-routers: 3 routers x 2 evictors x 3 seeds (18 cells), report included" 3 \
  bash -c "rm -rf $WORK/exp && $BIN run experiments/examples/azure-routers.yaml --trace $AZURE --out $WORK/exp -q"

# The BLIS workload: 512 +- 256 prompt and output tokens, 1 request/s, 1 instance, roofline,
# H100, Qwen2.5-7B. servelab draws lengths lognormally with the same mean and standard
# deviation (sigma 0.472 gives a coefficient of variation of 0.5).
# servelab runs it with its defaults (the router's gauges scraped every 50 ms, prefix caches
# seen through KV events 2 ms late: sim --help), with exact views (both 0s), and behind
# llm-d's precise prefix-cache scorer, the one router that reads the KV-event index, so the
# index is kept and read at every arrival (round-robin reads no cache and keeps none).
precise=weighted:precise-prefix=3,prefix=0,queue=2,kv=2
for n in 10000 100000; do
  $BIN trace synth --requests $n --rate 1 --input-mean 512 --output-mean 512 --input-sigma 0.472 --output-sigma 0.472 --seed 42 --out "$WORK/blis_$n.jsonl"
  row "$n requests ~512/512, 1 x H100, Qwen2.5-7B (servelab)" 3 \
    $BIN sim --trace "$WORK/blis_$n.jsonl" --instances 1 --gpu h100 --model qwen2.5-7b --json
done
row "10000 requests ~512/512, 1 x H100, Qwen2.5-7B (servelab, exact views)" 3 \
  $BIN sim --trace "$WORK/blis_10000.jsonl" --instances 1 --gpu h100 --model qwen2.5-7b --scrape-interval 0s --kv-event-delay 0s --json
row "10000 requests ~512/512, 1 x H100, Qwen2.5-7B (servelab, precise prefix-cache scorer)" 3 \
  $BIN sim --trace "$WORK/blis_10000.jsonl" --instances 1 --gpu h100 --model qwen2.5-7b --router $precise --json
row "10000 requests ~512/512, 1 x H100, Qwen2.5-7B (servelab, precise prefix-cache scorer, exact views)" 3 \
  $BIN sim --trace "$WORK/blis_10000.jsonl" --instances 1 --gpu h100 --model qwen2.5-7b --router $precise --scrape-interval 0s --kv-event-delay 0s --json
if [ -n "${BLIS_BIN:-}" ]; then
  # BLIS_REV names a checkout that is not a git repository (a source snapshot).
  if [ -e "$BLIS_DIR/.git" ]; then BLIS_REV=$(git -C "$BLIS_DIR" rev-parse --short HEAD); fi
  blis="BLIS ${BLIS_REV:-of unknown commit}"
  row "10000 requests ~512/512, 1 x H100, Qwen2.5-7B ($blis, defaults)" 1 bash scripts/blis.sh 10000
  row "10000 requests ~512/512, 1 x H100, Qwen2.5-7B ($blis, --cache-signal-delay 0)" 1 bash scripts/blis.sh 10000 --cache-signal-delay 0
  for s in "" ", exact views" ", precise prefix-cache scorer" ", precise prefix-cache scorer, exact views"; do
    ratio "10000 requests ~512/512, 1 x H100, Qwen2.5-7B (servelab$s)" "10000 requests ~512/512, 1 x H100, Qwen2.5-7B ($blis, defaults)" >>"$WORK/ratio.md"
  done
  ratio "10000 requests ~512/512, 1 x H100, Qwen2.5-7B (servelab, exact views)" \
    "10000 requests ~512/512, 1 x H100, Qwen2.5-7B ($blis, --cache-signal-delay 0)" >>"$WORK/ratio.md"
  if [ -n "${BLIS_FULL:-}" ]; then
    row "100000 requests ~512/512, 1 x H100, Qwen2.5-7B (BLIS)" 1 bash scripts/blis.sh 100000
  fi
fi

# The real engine against llama2.c's run.c on the TinyStories 15M and 110M shapes (random
# weights, the same ones in both formats). The engine's rates come from its forward-pass
# benchmark (context ~128 like run.c's 256-token generation from BOS); run.c's from its own
# "achieved tok/s" line. Set LLAMA2C_DIR to a llama2.c checkout for the peer rows.
echo "measuring the engine's forward pass (15m, 110m)" >&2
go test -run '^$' -bench 'BenchmarkForward' -benchtime 2s -count 3 ./engine/model/ >"$WORK/forward.txt"
engine_rate() { # preset case -> median tok/s
  grep "BenchmarkForward/$1/$2-" "$WORK/forward.txt" | awk '{for (i=1;i<=NF;i++) if ($(i+1)=="tok/s") print $i}' | sort -g | sed -n 2p
}
{
  for preset in 15m 110m; do
    echo "| $preset | servelab engine, decode, batch 1 | $(nproc) | $(engine_rate $preset decode-1) |"
    echo "| $preset | servelab engine, decode, batch 16 (aggregate) | $(nproc) | $(engine_rate $preset decode-16) |"
    echo "| $preset | servelab engine, prefill of 128 tokens | $(nproc) | $(engine_rate $preset prefill-128) |"
  done
  if [ -n "${LLAMA2C_DIR:-}" ]; then
    bash scripts/llama2c.sh "$BIN" "$WORK"
  fi
} >"$WORK/engine.md"

# The router's added latency against a loopback stub: closed loop, and open loop at 500
# routed requests per second (the issue's target: p50 under 1 ms, p99 under 5 ms).
echo "measuring the router's overhead" >&2
go test -run '^$' -bench 'BenchmarkOverhead$' -count 3 ./real/router/ >"$WORK/router.txt"
go test -run '^$' -bench 'BenchmarkOverheadAt500RPS' -benchtime 2500x -count 3 ./real/router/ >>"$WORK/router.txt"

# The dashboard: a run with and without the hub and four websocket clients attached (three
# reading, one stuck); issue 5's targets: at least 5 pushes/s, at most 10% slowdown.
echo "measuring the dashboard's cost" >&2
go test -run '^$' -bench 'BenchmarkDashboard$' -benchtime 10x -count 3 ./web/ >"$WORK/dash.txt"

# Fidelity: the simulator calibrated by a profile of the engine against a real local
# cluster on the first 300 requests of each shipped trace, 15M-parameter Llama shape (random
# weights), load 0.7 of the real cluster's measured capacity, each world twice: four routers
# behind 2 engine processes, and 1 engine alone (nothing to route) under three batch policies.
echo "measuring sim-vs-real fidelity" >&2
# fidelity refuses a machine other processes keep busy (a benchmark must not be contended):
# say why, instead of ending the script with a missing table.
fidelity_failed() {
  echo "make bench: servelab fidelity failed; its last words:" >&2
  tail -5 "$WORK/fidelity.err" >&2
  exit 1
}
$BIN model synth --preset 15m --out "$WORK/m15" >/dev/null
: >"$WORK/fidelity.txt"
for trace in "$AZURE" "$SHARED/traces/mooncake_conversation.jsonl"; do
  [ -f "$trace" ] || trace=examples/traces/mooncake_conv_500.jsonl
  /usr/bin/time -f "(%e s wall, %U s user, %S s sys)" -a -o "$WORK/fidelity.txt" \
    $BIN fidelity --trace "$trace" --engines 2 --model "$WORK/m15" --router round-robin --router least-request \
    --router prefix-affinity --router weighted --max-requests 300 >>"$WORK/fidelity.txt" 2>"$WORK/fidelity.err" ||
    fidelity_failed
  echo >>"$WORK/fidelity.txt"
  /usr/bin/time -f "(%e s wall, %U s user, %S s sys)" -a -o "$WORK/fidelity.txt" \
    $BIN fidelity --trace "$trace" --engines 1 --model "$WORK/m15" --router round-robin \
    --batch vllm --batch static --batch vllm:max_num_batched_tokens=256 \
    --max-requests 300 >>"$WORK/fidelity.txt" 2>"$WORK/fidelity.err" ||
    fidelity_failed
  echo >>"$WORK/fidelity.txt"
done

# Hostile clients against a real engine process (issue 10), tiny model: a 30 MB prompt
# alone and 16 at once while normal requests are timed, then 20 clients trickling their
# bodies a byte every 5 s. Once with the defaults (the body limit sized from the context)
# and once with --max-body-bytes 33554432 (the former limit), which sends the prompts
# through JSON decoding and the bounded tokenizer.
echo "measuring huge prompts and slow bodies" >&2
$BIN model synth --preset tiny --out "$WORK/tiny" >/dev/null
go build -o "$WORK/hostile" ./scripts/hostile
hostile() { # label trickle-clients engine-flags...
  local label=$1 trickle=$2; shift 2
  $BIN engine --model "$WORK/tiny" --port 0 "$@" >"$WORK/engine.log" 2>&1 &
  local pid=$! url=""
  for _ in $(seq 100); do
    url=$(grep -o 'http://[0-9.:]*' "$WORK/engine.log" || true)
    [ -n "$url" ] && break
    sleep 0.1
  done
  echo "### $label" >>"$WORK/hostile.md"
  echo >>"$WORK/hostile.md"
  echo "\`servelab engine --model tiny $*\`; load average $(cut -d' ' -f1-3 /proc/loadavg) before." >>"$WORK/hostile.md"
  echo >>"$WORK/hostile.md"
  "$WORK/hostile" -url "$url" -pid "$pid" -model tiny -trickle "$trickle" >>"$WORK/hostile.md"
  echo >>"$WORK/hostile.md"
  echo "engine CPU time: $(ps -o time= -p "$pid")" >>"$WORK/hostile.md"
  echo >>"$WORK/hostile.md"
  kill "$pid"; wait "$pid" || true
}
: >"$WORK/hostile.md"
hostile "Defaults" 20
hostile "Body limit raised to 32 MiB" 0 --max-body-bytes 33554432

# Kubernetes (issue 12): the README's newcomer path on 'servelab cluster up' (each step timed),
# 50 LLMServices settling with the controller on envtest (no pods) and on the local cluster
# (pods that run), and the local cluster's service proxy against direct connections.
echo "measuring the Kubernetes path" >&2
hack/k8s/build.sh >/dev/null
k8s() { # label command...: appends "| label | wall s |" to k8s.md
  local t0 t1
  t0=$(date +%s.%N); "${@:2}" >"$WORK/k8s-step.log" 2>&1 || { cat "$WORK/k8s-step.log" >&2; return 1; }
  t1=$(date +%s.%N)
  printf '| %s | %.1f |\n' "$1" "$(echo "$t1 - $t0" | bc)" >>"$WORK/k8s.md"
}
: >"$WORK/k8s.md"
KUBECONFIG="$WORK/cluster/kubeconfig"; export KUBECONFIG
k8s "servelab cluster up" $BIN cluster up --dir "$WORK/cluster"
k8s "servelab run experiments/examples/azure-routers.yaml" $BIN run experiments/examples/azure-routers.yaml --out "$WORK/runs/azure-routers" --report=false
k8s "servelab deploy --pick best --replicas 2 (to Ready)" $BIN deploy --from "$WORK/runs/azure-routers" --pick best --model-uri "file://$WORK/tiny" --replicas 2 --name winner
url=$(grep -o 'http://127[^ ]*' "$WORK/k8s-step.log" | tail -1)
k8s "servelab bench through the router (100 requests, Mooncake slice, x4)" $BIN bench --endpoint "$url" --trace examples/traces/mooncake_conv_500.jsonl --model "$WORK/tiny" --max-requests 100 --rate-scale 4 --json
k8s "servelab cluster down" $BIN cluster down --dir "$WORK/cluster"
unset KUBECONFIG
go test -run '^$' -bench 'BenchmarkReconcile50$' -benchtime 3x ./real/controller/ >"$WORK/k8s-bench.txt"
go test -run '^$' -bench BenchmarkReconcile50OnLocalCluster -benchtime 1x ./cmd/servelab/ >>"$WORK/k8s-bench.txt"
go test -run '^$' -bench BenchmarkForward -benchtime 2s -count 3 ./real/cluster/svcproxy/ >>"$WORK/k8s-bench.txt"

# Issue 13's real-path figures: the KV pull of prefill/decode disaggregation and the engine's
# CPU and disk KV tiers against recomputing (each script builds the 110m preset itself).
echo "measuring the P/D KV transfer and the KV tiers" >&2
REPS=$REPS scripts/pd-transfer >"$WORK/pd-transfer.txt"
REPS=$REPS scripts/kv-tiers >"$WORK/kv-tiers.md"

echo "running go test benchmarks (count $REPS)" >&2
go test -run '^$' -bench . -benchmem -benchtime "${BENCHTIME:-300ms}" -count "$REPS" \
  ./engine/... ./policies/... ./sim/... ./traces/... ./metrics/... ./internal/... >"$WORK/bench.txt"
go run golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da "$WORK/bench.txt" >"$WORK/benchstat.txt"

{
  echo "# Benchmarks"
  echo
  echo "Written by \`make bench\` (scripts/bench.sh) on $(date -u +%Y-%m-%d). Commands run from the repository"
  echo "root after \`make build\`; \$WORK is a temporary directory."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
  echo "- Memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "- $(go version)"
  echo "- Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "## End to end"
  echo
  echo "Wall and CPU time (user plus system) are medians of the repetitions; peak RSS the largest"
  echo "seen (GNU time). Load average when this was written: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| run | command | reps | wall s (median) | CPU s (median) | peak RSS MB |"
  echo "| --- | --- | ---: | ---: | ---: | ---: |"
  cat "$WORK/e2e.md"
  echo
  if [ -s "$WORK/ratio.md" ]; then
    echo "BLIS's time over servelab's on BLIS's 10,000-request workload (rows above):"
    echo
    echo "| BLIS | servelab | wall | CPU |"
    echo "| --- | --- | ---: | ---: |"
    cat "$WORK/ratio.md"
    echo
  fi
  if [ -f docs/benchmarks-notes.md ]; then cat docs/benchmarks-notes.md; echo; fi
  echo "## The real engine (CPU, fp32) against llama2.c run.c"
  echo
  echo "Median of 3. Engine: \`go test -run '^\$' -bench BenchmarkForward -benchtime 2s -count 3 ./engine/model/\`"
  echo "(random weights of the preset, written by \`servelab model synth --preset P --llama2c FILE\`); run.c:"
  echo "\`run FILE -z tokenizer.bin -t 0 -n 256 -i \"\"\` on the same weights (scripts/llama2c.sh)."
  echo
  echo "| model | implementation | threads | tok/s |"
  echo "| --- | --- | ---: | ---: |"
  cat "$WORK/engine.md"
  echo
  if [ -f docs/engine-notes.md ]; then cat docs/engine-notes.md; echo; fi
  echo "## Router overhead"
  echo
  echo "\`go test -run '^\$' -bench 'BenchmarkOverhead\$' -count 3 ./real/router/\` (closed loop) and"
  echo "\`-bench BenchmarkOverheadAt500RPS -benchtime 2500x -count 3\` (500 routed requests/s, open loop): the"
  echo "router's latency minus a direct request's, to a stub upstream on loopback."
  echo
  echo '```'
  grep -E '^Benchmark' "$WORK/router.txt"
  echo '```'
  echo
  echo "## The dashboard's cost"
  echo
  echo "\`go test -run '^\$' -bench 'BenchmarkDashboard\$' -benchtime 10x -count 3 ./web/\`: the same 12-cell"
  echo "experiment (the shipped Azure slice) alternately without and with the dashboard attached in-process"
  echo "(100 ms push cadence, three reading websocket clients on loopback and one that never reads):"
  echo "pushes/s is what a reading client received per second of run, slowdown_% the extra wall time."
  echo
  echo '```'
  grep -E '^Benchmark' "$WORK/dash.txt"
  echo '```'
  echo
  echo "## Simulator fidelity (predicted vs measured)"
  echo
  echo "\`servelab fidelity --trace T --engines 2 --model M15 --router round-robin --router least-request"
  echo "--router prefix-affinity --router weighted --max-requests 300\`, then \`--engines 1 --router round-robin"
  echo "--batch vllm --batch static --batch vllm:max_num_batched_tokens=256\` (one engine compares batch policies):"
  echo "the engine profiled here (one engine's thread share), the simulator run with that profile on the"
  echo "send times the load generator measured, and a real local cluster on the same slice (tokens scaled to"
  echo "the model's 256-token context, prompt and output lengths scaled apart, arrivals scaled to 70% of the"
  echo "real cluster's measured capacity), each world twice. Error = (predicted - measured) / measured; a"
  echo "ranking is decided where the predicted gap exceeds the run-to-run spread."
  echo
  echo '```'
  cat "$WORK/fidelity.txt"
  echo '```'
  echo
  if [ -f docs/fidelity-notes.md ]; then cat docs/fidelity-notes.md; echo; fi
  echo "## Huge prompts and slow bodies (real engine)"
  echo
  echo "\`go run ./scripts/hostile -url URL -pid PID\` against a \`servelab engine\` process on the tiny model"
  echo "(\`servelab model synth --preset tiny\`, max model len 512); RSS from /proc/PID/status, sampled every 5 ms."
  echo
  cat "$WORK/hostile.md"
  if [ -f docs/hostile-notes.md ]; then cat docs/hostile-notes.md; echo; fi
  echo "## Kubernetes"
  echo
  echo "The README's path from an experiment to a deployed winner on \`servelab cluster up\` (warm build cache,"
  echo "tiny model, 2 engines and the router as local processes), each step timed:"
  echo
  echo "| step | wall s |"
  echo "| --- | ---: |"
  cat "$WORK/k8s.md"
  echo
  echo "\`go test -run '^\$' -bench 'BenchmarkReconcile50\$' -benchtime 3x ./real/controller/\` (envtest: the controller"
  echo "applies 50 LLMServices' objects and writes their status; no pods), \`-bench BenchmarkReconcile50OnLocalCluster"
  echo "-benchtime 1x ./cmd/servelab/\` (50 LLMServices on the local cluster: s-settled when the controller has applied"
  echo "all, s-ready when all 100 engine and router processes pass their probes) and \`-bench BenchmarkForward"
  echo "./real/cluster/svcproxy/\` (the local cluster's service proxy against direct connections):"
  echo
  echo '```'
  grep -E '^Benchmark' "$WORK/k8s-bench.txt"
  echo '```'
  echo
  echo "## Prefill/decode disaggregation, real path (KV pulled over loopback)"
  echo
  echo "\`scripts/pd-transfer\`: a prefill engine and a decode engine (\`servelab engine --role prefill|decode\`) on"
  echo "loopback; pull = \`POST /v1/kv_transfer/pull\` of the prompt's blocks alone; ttft = a decode request"
  echo "carrying the prefill's \`kv_transfer_params\` (pull + writing the blocks + one decode step); d_pull = the"
  echo "decode engine's own pull time (\`servelab:kv_transfer_pull_seconds\`); step = the same prompt from the"
  echo "decode engine's prefix cache (one decode step). Medians; times in ms, per-block in us."
  echo
  echo '```'
  cat "$WORK/pd-transfer.txt"
  echo '```'
  echo
  cat "$WORK/kv-tiers.md"
  echo
  # Issue 15's GPU section: written by hand (its figures come from the device script, which
  # make bench cannot run), kept across runs.
  if [ -f docs/gpu-notes.md ]; then cat docs/gpu-notes.md; echo; fi
  echo "## Hot paths (go test -bench, medians of $REPS runs via benchstat)"
  echo
  echo '```'
  cat "$WORK/benchstat.txt"
  echo '```'
} >"$OUT"
echo "wrote $OUT" >&2
