#!/usr/bin/env bash
# The GPU check (issue 15), run on a machine with an NVIDIA GPU and no Go toolchain, from
# the repository root, over the binaries that scripts/gpu-bundle.sh (make gpu-bundle) built
# elsewhere into bin/gpu-bundle:
#
#   1. nvidia-smi;
#   2. the CUDA test binaries with -test.v under SERVELAB_REQUIRE_GPU=1 (a test that would
#      skip without a GPU fails instead): the driver (and its logits-sized copies to
#      page-locked and pageable memory, their bandwidth logged), every kernel against its
#      CPU reference, a forward pass of the 15m and 110m presets against the CPU engine, the
#      engine serving the OpenAI API on the GPU, NVML telemetry; the kernels' benchmarks;
#      then the forward pass of a real shape (llama-3.2-1b, synthesised) against the CPU;
#   3. servelab model synth --preset llama-3.1-8b --dtype bfloat16 (16 GB, on local disk);
#   4. the benchmarks of the issue's targets (cuda/gpubench) on it, -test.count 3;
#   5. servelab profile --device cuda on it, the GPU grid;
#   6. servelab profile compare (measured vs the simulator's h200 roofline) and servelab sim
#      of a shipped trace with the profile and with the roofline.
#
# Every step has a time limit within the run's (GPU_CHECK_DEADLINE seconds, 560 by default,
# inside the device tool's 10 minutes); a step that fails or runs out of time is recorded and
# the rest still run, except that a failed driver test (no libcuda.so.1, no device, no
# context) skips the model steps, which could not load either, and leaves the device time.
# Test and benchmark output goes to its log as it is printed, so a step stopped at its limit
# keeps what it had printed; the Go binaries get -test.timeout a little inside the step's limit,
# so a hung test or benchmark panics with every goroutine's stack instead of dying silently.
# The script exits non-zero if any step failed. Everything it reports is under $OUT, eight
# files at most (the device tool's limit): summary.txt (each step's status and seconds, the
# bundle's MANIFEST, then every test's PASS/FAIL line, the benchmarks' result lines and their
# verdicts against the issue's targets, read off the logs), nvidia-smi.txt (also where the
# driver libraries were found), tests.log, synth.log, bench.txt, profile.log,
# h200-llama-3.1-8b.json (the profile, h200-PRESET.json) and sim.md.
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
  "driver.test cuda/driver ^(TestGPUInitAndDeviceCount|TestGPUMemcpyPinned)$"
  "kernels.test cuda/kernels ^TestKernelsMatchCPU$"
  "gpu.test cuda/gpu ^(TestForwardMatchesCPU|TestEngineServesOnGPU)$"
  "telemetry.test cuda/telemetry ^TestOpenOnGPU$"
)
# A forward pass of a real shape against the CPU engine, on llama-3.2-1b (2.5 GB; its CPU
# reference in float32 takes 5 GB of host memory): NAME.test PACKAGE -test.run PATTERN.
SHAPE_TEST="gpu.test cuda/gpu ^TestForwardMatchesCPUOnModel$"
SHAPE_PRESET=${GPU_CHECK_SHAPE_PRESET:-llama-3.2-1b}
# The kernels' own benchmarks (no model needed): NAME.test PACKAGE -test.bench PATTERN.
KERNEL_BENCH="kernels.test cuda/kernels ^(BenchmarkGemvBF16|BenchmarkGemmBF16|BenchmarkAttnPrefill)$"
# The issue's targets, on the synthesised model.
BENCH="gpubench.test cuda/gpubench ^(BenchmarkDecodeSingleStream|BenchmarkDecodeBatch64|BenchmarkPrefill)$"
BENCHTIME=${GPU_CHECK_BENCHTIME:-20x}
# GPU_CHECK_STEP_LIMIT caps every step's limit (seconds), for a quick try of the flow.
STEP_CAP=${GPU_CHECK_STEP_LIMIT:-0}

# names PATTERN: the names of ^NAME$ or ^(NAME|NAME...)$, one a line.
names() {
  local p=${1#^}
  p=${p%$}
  p=${p#(}
  p=${p%)}
  tr '|' '\n' <<<"$p"
}

# gotimeout: the -test.timeout for a Go test binary run by step (STEP_LIMIT, set by step):
# 10 s inside the step's limit, so the binary's own timeout panics with its goroutines'
# stacks (which test or benchmark hung, and where) before timeout(1) kills it.
gotimeout() { echo "$((${STEP_LIMIT:-600} > 20 ? ${STEP_LIMIT:-600} - 10 : 10))s"; }

# gotest DIR BIN PATTERN ARGS...: runs the test binary in its package's directory (as go
# test does) with -test.v, its output going out as it is printed (a step stopped at its
# limit keeps it), and fails unless every test the pattern names passed.
gotest() {
  local dir=$1 bin=$2 pattern=$3 out rc n
  shift 3
  out=$(mktemp)
  (cd "$dir" && "$bin" -test.v -test.count 1 -test.timeout "$(gotimeout)" -test.run "$pattern" "$@" 2>&1) | tee "$out"
  rc=${PIPESTATUS[0]}
  for n in $(names "$pattern"); do
    grep -q -- "^--- PASS: $n " "$out" || { echo "gpu-check: $n did not run and pass"; rc=1; }
  done
  rm -f "$out"
  return "$rc"
}

# gobench DIR BIN PATTERN ARGS...: runs the benchmarks the pattern names, output as
# gotest's, and fails unless each printed a result.
gobench() {
  local dir=$1 bin=$2 pattern=$3 out rc n
  shift 3
  out=$(mktemp)
  (cd "$dir" && "$bin" -test.run '^$' -test.bench "$pattern" -test.v -test.timeout "$(gotimeout)" "$@" 2>&1) | tee "$out"
  rc=${PIPESTATUS[0]}
  for n in $(names "$pattern"); do
    grep -Eq -- "^$n(/[^[:space:]]*)?(-[0-9]+)?[[:space:]]+[0-9]+[[:space:]]" "$out" || { echo "gpu-check: $n printed no result"; rc=1; }
  done
  rm -f "$out"
  return "$rc"
}
export -f names gotimeout gotest gobench

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
  [ "$STEP_CAP" -gt 0 ] && [ "$limit" -gt "$STEP_CAP" ] && limit=$STEP_CAP
  printf '\n=== %s (limit %ds): %s\n' "$name" "$limit" "$*" | tee -a "$log"
  STEP_LIMIT=$limit timeout -k 10 "$limit" "$@" >>"$log" 2>&1
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

# The driver's libraries: cuda/driver dlopens libcuda.so.1 and go-nvml libnvidia-ml.so.1 by
# soname, so the loader must find them (ldconfig's cache or LD_LIBRARY_PATH). A container
# whose driver is mounted at /usr/local/nvidia without either gets that folder added.
findlib() { ldconfig -p 2>/dev/null | grep -q "$1 " || { IFS=: read -ra ds <<<"${LD_LIBRARY_PATH:-}"; for d in "${ds[@]}"; do [ -n "$d" ] && [ -e "$d/$1" ] && return 0; done; return 1; }; }
for lib in libcuda.so.1 libnvidia-ml.so.1; do
  if ! findlib "$lib"; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
      if [ -e "$d/$lib" ]; then
        export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        echo "gpu-check: $lib is not in ldconfig's cache or LD_LIBRARY_PATH; found in $d, added to LD_LIBRARY_PATH" | tee -a "$SUMMARY"
        break
      fi
    done
  fi
done

step nvidia-smi 30 "$OUT/nvidia-smi.txt" bash -c 'rc=0
  nvidia-smi && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv || rc=$?
  echo; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  ldconfig -p | grep -E "libcuda\.so|libnvidia-ml\.so" || echo "ldconfig knows no libcuda.so or libnvidia-ml.so"
  ls -l /dev/nvidia* 2>&1; ldd --version | head -1; exit $rc'

# The driver test comes first: if it fails, nothing else can load a model on the GPU, and
# the model steps are skipped (their minutes kept for a rerun).
driver_ok=0 telemetry_ok=0
for t in "${TESTS[@]}"; do
  read -r bin pkg pattern <<<"$t"
  if unpack "$bin" >>"$OUT/tests.log" 2>&1; then
    if step "test ${pkg#cuda/}" 150 "$OUT/tests.log" bash -c 'gotest "$@"' _ "$pkg" "$WORK/bin/$bin" "$pattern"; then
      [ "$pkg" = cuda/driver ] && driver_ok=1
      [ "$pkg" = cuda/telemetry ] && telemetry_ok=1
    fi
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

# The real shape's check: the 1B written (seconds), the GPU against the CPU, the 1B removed.
read -r bin pkg pattern <<<"$SHAPE_TEST"
SHAPE_MODEL=$WORK/$SHAPE_PRESET
if [ "$driver_ok" = 1 ] && [ -x "$WORK/bin/$bin" ]; then
  if step "synth $SHAPE_PRESET bf16" 60 "$OUT/synth.log" "$SERVELAB" model synth --preset "$SHAPE_PRESET" --dtype bfloat16 --out "$SHAPE_MODEL"; then
    step "test ${pkg#cuda/} $SHAPE_PRESET" 120 "$OUT/tests.log" env SERVELAB_GPU_CHECK_MODEL="$SHAPE_MODEL" bash -c 'gotest "$@"' _ "$pkg" "$WORK/bin/$bin" "$pattern"
  fi
  rm -rf "$SHAPE_MODEL"
else
  printf '%-34s %s\n' "test ${pkg#cuda/} $SHAPE_PRESET" "NOT RUN (the driver test failed, or no $bin)" | tee -a "$SUMMARY"
  failed+=("test ${pkg#cuda/} $SHAPE_PRESET")
fi

synth_ok=0
if [ "$driver_ok" = 1 ]; then
  step "synth $PRESET bf16" 200 "$OUT/synth.log" "$SERVELAB" model synth --preset "$PRESET" --dtype bfloat16 --out "$MODEL" && synth_ok=1
else
  printf '%-34s %s\n' "synth $PRESET bf16" "NOT RUN (the driver test failed: see tests.log)" | tee -a "$SUMMARY"
  failed+=("synth")
fi

# The benchmarks take their bounds from the GPU table's row whose device_names holds the
# CUDA device name ("NVIDIA H200"); a variant's name ("NVIDIA H200 NVL") is not there and
# would fail every benchmark, so an H200 of any name is measured against the h200 row.
gpuname=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$gpuname" in
  "NVIDIA H200") ;;
  "NVIDIA H200"*)
    export SERVELAB_GPU=${SERVELAB_GPU:-h200}
    echo "gpu-check: the GPU is \"$gpuname\": the benchmarks use the GPU table's h200 row (SERVELAB_GPU=$SERVELAB_GPU)" | tee -a "$SUMMARY"
    ;;
esac

read -r bin pkg pattern <<<"$BENCH"
if [ "$synth_ok" = 1 ] && unpack "$bin" >>"$OUT/bench.txt" 2>&1; then
  step "bench ${pkg#cuda/}" 240 "$OUT/bench.txt" env SERVELAB_GPU_MODEL="$MODEL" bash -c 'gobench "$@"' _ "$pkg" "$WORK/bin/$bin" "$pattern" \
    -test.benchtime "$BENCHTIME" -test.count 3
else
  printf '%-34s %s\n' "bench ${pkg#cuda/}" "NOT RUN (no model or no $bin)" | tee -a "$SUMMARY"
  failed+=("bench ${pkg#cuda/}")
fi

if [ "$synth_ok" = 1 ]; then
  # An engine on an H200 serving the 8B: vLLM's H100-class max_num_seqs, 48 GiB of KV cache
  # (the GPU grid's largest shapes that fit it are measured), and steps of at most
  # GPU_CHECK_PROFILE_TOKENS (4096) tokens: the grid's 8192-token prompts over 8192 tokens of
  # context take the naive prefill attention seconds each (an estimate: 1-3 minutes for the
  # grid's three timings of each), more than the step's limit holds; 8192 is vLLM's.
  # Without NVML (the telemetry test failed) the profile is measured without telemetry
  # rather than not at all.
  notel=()
  if [ "$telemetry_ok" != 1 ]; then
    notel=(--gpu-telemetry-interval 0)
    echo "gpu-check: the telemetry test failed: profile runs with --gpu-telemetry-interval 0" | tee -a "$SUMMARY"
  fi
  step "profile --device cuda" 200 "$OUT/profile.log" "$SERVELAB" profile --device cuda --dtype bfloat16 --model "$MODEL" \
    --max-num-batched-tokens "${GPU_CHECK_PROFILE_TOKENS:-4096}" --max-num-seqs 256 --kv-cache-memory-bytes $((48 << 30)) \
    "${notel[@]}" --out "$PROFILE"
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
# What a later session reads first: every test's outcome, the benchmarks' result lines and
# their verdicts (the b.Logf lines naming a target), copied off the logs.
{
  echo
  echo "## tests (tests.log)"
  grep -E '^(--- (PASS|FAIL|SKIP)|panic:|gpu-check:)' "$OUT/tests.log" 2>/dev/null || echo "(none)"
  echo
  echo "## benchmarks (bench.txt)"
  grep -E '^(Benchmark[^[:space:]]+[[:space:]]+[0-9]+[[:space:]]|--- FAIL|panic:|gpu-check:)|target|roofline|peak' "$OUT/bench.txt" 2>/dev/null | sed 's/^[[:space:]]*//' || echo "(none)"
} >>"$SUMMARY"
echo >>"$SUMMARY"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (total ${SECONDS}s)" | tee -a "$SUMMARY"
  exit 1
fi
echo "all steps passed (total ${SECONDS}s)" | tee -a "$SUMMARY"
