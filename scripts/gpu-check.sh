#!/usr/bin/env bash
# The GPU check (issue 15), run on a machine with an NVIDIA GPU and no Go toolchain, from
# the repository root, over the binaries that scripts/gpu-bundle.sh (make gpu-bundle) built
# elsewhere into bin/gpu-bundle:
#
#   1. nvidia-smi;
#   2. the CUDA test binaries with -test.v under SERVELAB_REQUIRE_GPU=1 (a test that would
#      skip without a GPU fails instead): the driver, every kernel against its CPU
#      reference, a forward pass of the 15m and 110m presets against the CPU engine, the
#      engine serving the OpenAI API on the GPU, NVML telemetry; the kernels' benchmarks;
#   3. servelab model synth --preset llama-3.1-8b --dtype bfloat16 (16 GB, on local disk);
#   4. the benchmarks of the issue's targets (cuda/gpubench) on it, -test.count 3;
#   5. servelab profile --device cuda on it, the GPU grid;
#   6. servelab profile compare (measured vs the simulator's h200 roofline) and servelab sim
#      of a shipped trace with the profile and with the roofline.
#
# Every step has a time limit within the run's (GPU_CHECK_DEADLINE seconds, 560 by default,
# inside the device tool's 10 minutes); a step that fails or runs out of time is recorded and
# the rest still run; the script exits non-zero if any step failed. Everything it reports is
# under $OUT, eight files at most (the device tool's limit): summary.txt (each step's status
# and seconds, the bundle's MANIFEST), nvidia-smi.txt, tests.log, synth.log, bench.txt,
# profile.log, h200-llama-3.1-8b.json (the profile, h200-PRESET.json) and sim.md.
#
# With the device tool:  make gpu-bundle, then run "bash scripts/gpu-check.sh" carrying
# bin/gpu-bundle (README, "GPU (CUDA) backend").
set -u
cd "$(dirname "$0")/.."

BUNDLE=${GPU_BUNDLE:-bin/gpu-bundle}
OUT=${OUT:-out/gpu-check}
WORK=${GPU_CHECK_WORK:-/tmp/servelab-gpu-check}
DEADLINE=${GPU_CHECK_DEADLINE:-560}
TRACE=${GPU_CHECK_TRACE:-examples/traces/azure_conv_3000.csv}
# GPU_CHECK_PRESET=llama-3.2-1b makes a quicker run on the device (2.5 GB; the benchmarks'
# bounds follow the model, the issue's targets are the 8B's); GPU_CHECK_PRESET=tiny tries the
# script's flow anywhere (its GPU steps fail without a GPU).
PRESET=${GPU_CHECK_PRESET:-llama-3.1-8b}
MODEL=$WORK/$PRESET
PROFILE=$OUT/h200-$PRESET.json
export SERVELAB_REQUIRE_GPU=1

# The test binaries: NAME.test PACKAGE -test.run PATTERN (a CI test checks that every name
# in a pattern is a test of that package, and that gpu-bundle.sh builds each binary). Each
# named test must run and pass: one the binary lacks (a file behind a build tag it was built
# without, such as cuda/telemetry's NVML test without cgo) fails its step, not "no tests to run".
TESTS=(
  "driver.test cuda/driver ^TestGPUInitAndDeviceCount$"
  "kernels.test cuda/kernels ^TestKernelsMatchCPU$"
  "gpu.test cuda/gpu ^(TestForwardMatchesCPU|TestEngineServesOnGPU)$"
  "telemetry.test cuda/telemetry ^TestOpenOnGPU$"
)
# The kernels' own benchmarks (no model needed): NAME.test PACKAGE -test.bench PATTERN.
KERNEL_BENCH="kernels.test cuda/kernels ^(BenchmarkGemvBF16|BenchmarkGemmBF16|BenchmarkAttnPrefill)$"
# The issue's targets, on the synthesised model.
BENCH="gpubench.test cuda/gpubench ^(BenchmarkDecodeSingleStream|BenchmarkDecodeBatch64|BenchmarkPrefill)$"
BENCHTIME=${GPU_CHECK_BENCHTIME:-20x}

# names PATTERN: the names of ^NAME$ or ^(NAME|NAME...)$, one a line.
names() {
  local p=${1#^}
  p=${p%$}
  p=${p#(}
  p=${p%)}
  tr '|' '\n' <<<"$p"
}

# gotest DIR BIN PATTERN ARGS...: runs the test binary in its package's directory (as go
# test does) with -test.v, and fails unless every test the pattern names passed.
gotest() {
  local dir=$1 bin=$2 pattern=$3 out rc n
  shift 3
  out=$(cd "$dir" && "$bin" -test.v -test.count 1 -test.run "$pattern" "$@" 2>&1)
  rc=$?
  printf '%s\n' "$out"
  for n in $(names "$pattern"); do
    grep -q -- "^--- PASS: $n " <<<"$out" || { echo "gpu-check: $n did not run and pass"; rc=1; }
  done
  return "$rc"
}

# gobench DIR BIN PATTERN ARGS...: runs the benchmarks the pattern names, and fails unless
# each printed a result.
gobench() {
  local dir=$1 bin=$2 pattern=$3 out rc n
  shift 3
  out=$(cd "$dir" && "$bin" -test.run '^$' -test.bench "$pattern" -test.v "$@" 2>&1)
  rc=$?
  printf '%s\n' "$out"
  for n in $(names "$pattern"); do
    grep -Eq -- "^$n(/[^[:space:]]*)?(-[0-9]+)?[[:space:]]+[0-9]+[[:space:]]" <<<"$out" || { echo "gpu-check: $n printed no result"; rc=1; }
  done
  return "$rc"
}
export -f names gotest gobench

mkdir -p "$OUT" "$WORK/bin"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
failed=()

# step NAME LIMIT_S LOG CMD...: runs CMD with its output appended to LOG, within LIMIT_S
# and what is left of the deadline, and records the outcome in summary.txt.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((DEADLINE - SECONDS)) start=$SECONDS rc status
  if [ "$left" -lt 15 ]; then
    printf '%-34s NOT RUN (the run was out of time)\n' "$name" >>"$SUMMARY"
    failed+=("$name")
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  printf '\n=== %s (limit %ds): %s\n' "$name" "$limit" "$*" | tee -a "$log"
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="FAILED (timed out after ${limit}s)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  printf '%-34s %-32s %4ds\n' "$name" "$status" $((SECONDS - start)) | tee -a "$SUMMARY"
  [ "$rc" -eq 0 ] || failed+=("$name")
  return "$rc"
}

# unpack NAME: the bundle's NAME, ungzipped into $WORK/bin.
unpack() {
  [ -f "$BUNDLE/$1.gz" ] || { echo "$BUNDLE/$1.gz is not in the bundle (see its MANIFEST; make gpu-bundle)"; return 1; }
  gzip -dc "$BUNDLE/$1.gz" >"$WORK/bin/$1" && chmod +x "$WORK/bin/$1"
}

{
  echo "servelab GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(df -h "$WORK" | awk 'NR == 2 {print $4}') free in $WORK"
  cat "$BUNDLE/MANIFEST" 2>/dev/null || echo "no $BUNDLE/MANIFEST: run make gpu-bundle before this script"
  echo
} >>"$SUMMARY"

step nvidia-smi 30 "$OUT/nvidia-smi.txt" bash -c 'nvidia-smi && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv'

for t in "${TESTS[@]}"; do
  read -r bin pkg pattern <<<"$t"
  if unpack "$bin" >>"$OUT/tests.log" 2>&1; then
    step "test ${pkg#cuda/}" 150 "$OUT/tests.log" bash -c 'gotest "$@"' _ "$pkg" "$WORK/bin/$bin" "$pattern"
  else
    printf '%-34s %s\n' "test ${pkg#cuda/}" "FAILED (no $bin in the bundle)" | tee -a "$SUMMARY"
    failed+=("test ${pkg#cuda/}")
  fi
done

read -r bin pkg pattern <<<"$KERNEL_BENCH"
if [ -x "$WORK/bin/$bin" ]; then
  step "bench ${pkg#cuda/}" 60 "$OUT/bench.txt" bash -c 'gobench "$@"' _ "$pkg" "$WORK/bin/$bin" "$pattern" -test.benchtime 50x
else
  printf '%-34s %s\n' "bench ${pkg#cuda/}" "NOT RUN (no $bin)" | tee -a "$SUMMARY"
  failed+=("bench ${pkg#cuda/}")
fi

unpack servelab >>"$OUT/synth.log" 2>&1
SERVELAB=$WORK/bin/servelab
synth_ok=0
step "synth $PRESET bf16" 200 "$OUT/synth.log" "$SERVELAB" model synth --preset "$PRESET" --dtype bfloat16 --out "$MODEL" && synth_ok=1

read -r bin pkg pattern <<<"$BENCH"
if [ "$synth_ok" = 1 ] && unpack "$bin" >>"$OUT/bench.txt" 2>&1; then
  step "bench ${pkg#cuda/}" 240 "$OUT/bench.txt" env SERVELAB_GPU_MODEL="$MODEL" bash -c 'gobench "$@"' _ "$pkg" "$WORK/bin/$bin" "$pattern" \
    -test.benchtime "$BENCHTIME" -test.count 3
else
  printf '%-34s %s\n' "bench ${pkg#cuda/}" "NOT RUN (no model or no $bin)" | tee -a "$SUMMARY"
  failed+=("bench ${pkg#cuda/}")
fi

if [ "$synth_ok" = 1 ]; then
  # An engine on an H200 serving the 8B: vLLM's H100-class limits, and 48 GiB of KV cache
  # (the GPU grid's largest shapes that fit it are measured).
  step "profile --device cuda" 200 "$OUT/profile.log" "$SERVELAB" profile --device cuda --dtype bfloat16 --model "$MODEL" \
    --max-num-batched-tokens 8192 --max-num-seqs 256 --kv-cache-memory-bytes $((48 << 30)) --out "$PROFILE"
else
  printf '%-34s %s\n' "profile --device cuda" "NOT RUN (no model)" | tee -a "$SUMMARY"
  failed+=("profile --device cuda")
fi

if [ -f "$PROFILE" ]; then
  step "profile compare" 30 "$OUT/sim.md" "$SERVELAB" profile compare "$PROFILE" --gpu h200
  step "sim profile" 60 "$OUT/sim.md" "$SERVELAB" sim --latency "profile:$PROFILE" --trace "$TRACE" --max-requests 1000
  step "sim roofline" 60 "$OUT/sim.md" "$SERVELAB" sim --latency roofline --gpu h200 --model "$MODEL" --trace "$TRACE" --max-requests 1000
else
  printf '%-34s %s\n' "sim" "NOT RUN (no profile)" | tee -a "$SUMMARY"
  failed+=("sim")
fi

rm -rf "$MODEL"
echo >>"$SUMMARY"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (total ${SECONDS}s)" | tee -a "$SUMMARY"
  exit 1
fi
echo "all steps passed (total ${SECONDS}s)" | tee -a "$SUMMARY"
