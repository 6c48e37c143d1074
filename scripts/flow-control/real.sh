#!/usr/bin/env bash
# The priority target on the real path: two engines of a tiny model behind servelab router,
# a two-class synthetic trace (70% critical, 30% sheddable) replayed with servelab bench,
# unloaded, at saturation (the capacity: the throughput at RATE_SAT offered) and at RATE_HIGH
# without flow control, with GIE's defaults and without the KV criterion. Prints each run's
# throughput and each class's served/refused requests and median/p99 TTFT.
#
#   scripts/flow-control/real.sh [MODEL_DIR]   (default bin/models/tiny; make builds bin/servelab)
#
# RATE_LOW (10), RATE_SAT (300), RATE_HIGH (270: 1.5x the 180 req/s measured once here) and
# N (3000 requests) override. The engines run priority batching (vLLM's priority scheduling).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin/servelab}
MODEL=${1:-bin/models/tiny}
RATE_LOW=${RATE_LOW:-10} RATE_SAT=${RATE_SAT:-300} RATE_HIGH=${RATE_HIGH:-270} N=${N:-3000}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

one() { # RATE REQUESTS FLOWSPEC
	local rate=$1 n=$2 fc=$3 port
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	"$BIN" trace synth --requests "$n" --rate "$rate" --class critical:0.7 --class sheddable:0.3 \
		--input-mean 96 --output-mean 32 --input-sigma 0.5 --output-sigma 0.5 --seed 1 --out "$WORK/t.jsonl" >/dev/null
	local args=()
	[ "$fc" != none ] && args=(--flow-control "$fc")
	"$BIN" up --engines 2 --model "$MODEL" --batch priority --router least-request "${args[@]}" \
		--objective critical=1 --objective sheddable=-1 --port "$port" >"$WORK/up.log" 2>&1 &
	local up=$!
	for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
	"$BIN" bench --endpoint "http://127.0.0.1:$port" --model "$MODEL" --trace "$WORK/t.jsonl" --token-scale 1 \
		--max-model-len 512 --allow-failures --json >"$WORK/s.json" 2>/dev/null
	kill "$up"; wait "$up" 2>/dev/null || true
	python3 - "$WORK/s.json" "$rate" "$fc" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
line = "%6s req/s offered, flow control %-32s served %.1f req/s" % (sys.argv[2], sys.argv[3], s["request_throughput"])
for name, c in sorted(s.get("classes", {}).items()):
    line += " | %s: %d served, %d refused, TTFT p50 %.0f p99 %.0f ms" % (name, c["completed"], c["failed"], c["median_ttft_ms"], c["p99_ttft_ms"])
print(line)
PY
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
one "$RATE_LOW" 200 none
one "$RATE_SAT" "$N" none
for fc in none gie gie:kv_cache_util_threshold=1; do
	one "$RATE_HIGH" "$N" "$fc"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
