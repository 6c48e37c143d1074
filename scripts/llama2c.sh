#!/usr/bin/env bash
# The engine's peer in make bench: karpathy/llama2.c's run.c (C, fp32) on the same random
# weights as the engine's 15m and 110m presets (written by `servelab model synth --llama2c`).
# LLAMA2C_DIR must hold run.c and tokenizer.bin from a llama2.c checkout; nothing of it is
# committed here. Prints one Markdown table row per build and model.
set -euo pipefail
BIN=$1 WORK=$2
dir=${LLAMA2C_DIR:?set LLAMA2C_DIR to a llama2.c checkout}
rev=$(git -C "$dir" rev-parse --short HEAD 2>/dev/null || echo "unknown commit")
gcc -O3 -o "$WORK/run_O3" "$dir/run.c" -lm
gcc -Ofast -march=native -o "$WORK/run_fast" "$dir/run.c" -lm
gcc -Ofast -march=native -fopenmp -o "$WORK/run_omp" "$dir/run.c" -lm
for preset in 15m 110m; do
  "$BIN" model synth --preset "$preset" --out "$WORK/model_$preset" --llama2c "$WORK/$preset.bin" >/dev/null
  for build in "O3 1" "fast 1" "omp 2"; do
    set -- $build
    rates=()
    for _ in 1 2 3; do
      # 256 tokens from BOS, greedy: the average context is ~128, as in the engine's benchmark.
      r=$(OMP_NUM_THREADS=$2 "$WORK/run_$1" "$WORK/$preset.bin" -z "$dir/tokenizer.bin" -t 0 -n 256 -i "" 2>&1 >/dev/null | awk '/achieved tok\/s/ {print $3}')
      rates+=("$r")
    done
    med=$(printf '%s\n' "${rates[@]}" | sort -g | sed -n 2p)
    echo "| $preset | llama2.c run.c ($rev) -$([ "$1" = O3 ] && echo O3 || echo Ofast -march=native)$([ "$1" = omp ] && echo ' -fopenmp') | $2 | $med |"
  done
done
