#!/usr/bin/env bash
# Runs the peer simulator BLIS (github.com/inference-sim/inference-sim) on the workload
# servelab's benchmark compares against: N requests of about 512 prompt and 512 output
# tokens (BLIS's defaults: normal, stdev 256) arriving at 1 request/s, one instance,
# roofline latency, H100, Qwen2.5-7B. BLIS_DIR is a checkout of BLIS (it reads its
# defaults.yaml, hardware_config.json and model_configs/ from there), BLIS_BIN its binary.
# Extra arguments go to BLIS (e.g. --cache-signal-delay 0).
set -euo pipefail
n=${1:?usage: blis.sh REQUESTS [BLIS FLAGS]}
shift
cd "${BLIS_DIR:?set BLIS_DIR to a BLIS checkout}"
exec "${BLIS_BIN:?set BLIS_BIN to a built BLIS binary}" run --model qwen/qwen2.5-7b-instruct \
  --latency-model roofline --hardware H100 --tp 1 --num-requests "$n" --rate 1 --seed 42 "$@" 2>/dev/null
