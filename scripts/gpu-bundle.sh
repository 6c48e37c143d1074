#!/usr/bin/env bash
# make gpu-bundle: builds, here (with Go), what scripts/gpu-check.sh runs on a GPU machine
# that has no Go toolchain: the test binaries of the CUDA packages (go test -c) and the
# servelab binary, stripped (-ldflags '-s -w') and gzipped into bin/gpu-bundle (ignored by
# git), with a MANIFEST of the commit, the Go version and the sizes. The device tool carries
# the folder beside the working tree, and the two together must stay under its 64 MiB: the
# script measures both and fails past the limit.
#
#   make gpu-bundle        then, on the device:   bash scripts/gpu-check.sh
#
# GPU_BUNDLE sets the folder, GPU_BUNDLE_TAGS build tags, GPU_BUNDLE_LIMIT_MIB the limit.
# cgo is on (CGO_ENABLED=1, a C compiler needed): the NVML telemetry (cuda/telemetry, go-nvml)
# needs it, and servelab --device cuda without it refuses to start with telemetry on. The
# binaries then need the device's glibc to be at least this machine's (Debian 12's 2.36
# against the device image's Ubuntu 24.04 2.39 here).
set -euo pipefail
cd "$(dirname "$0")/.."

OUTDIR=${GPU_BUNDLE:-bin/gpu-bundle}
TAGS=${GPU_BUNDLE_TAGS:-}
LIMIT_MIB=${GPU_BUNDLE_LIMIT_MIB:-64}
export CGO_ENABLED=${CGO_ENABLED:-1}
if [ "$CGO_ENABLED" = 1 ] && ! command -v "$(go env CC)" >/dev/null; then
  echo "gpu-bundle: cgo needs a C compiler ($(go env CC)) for the NVML telemetry; install one, or CGO_ENABLED=0 (telemetry.test then lacks its GPU test)" >&2
  exit 1
fi

# The test binaries gpu-check.sh runs, NAME:PACKAGE (gpu-check.sh names the same).
TESTS=(
  driver:./cuda/driver
  kernels:./cuda/kernels
  gpu:./cuda/gpu
  telemetry:./cuda/telemetry
  gpubench:./cuda/gpubench
)

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
missing=()
for t in "${TESTS[@]}"; do
  name=${t%%:*} pkg=${t#*:}
  if [ ! -d "$pkg" ]; then
    echo "gpu-bundle: $pkg is not in this tree; gpu-check.sh will report $name.test missing" >&2
    missing+=("$pkg")
    continue
  fi
  echo "gpu-bundle: go test -c $pkg" >&2
  go test -c -tags "$TAGS" -ldflags='-s -w' -o "$OUTDIR/$name.test" "$pkg"
done
echo "gpu-bundle: go build ./cmd/servelab" >&2
go build -tags "$TAGS" -ldflags='-s -w' -o "$OUTDIR/servelab" ./cmd/servelab

manifest=$(mktemp)
trap 'rm -f "$manifest"' EXIT
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(go version), CGO_ENABLED=$CGO_ENABLED, tags '${TAGS}'"
  [ ${#missing[@]} -eq 0 ] || echo "missing packages: ${missing[*]}"
  for f in "$OUTDIR"/*; do
    printf '%s %d bytes stripped' "$(basename "$f")" "$(stat -c %s "$f")"
    gzip -9 -n "$f"
    printf ', %d gzipped\n' "$(stat -c %s "$f.gz")"
  done
} >"$manifest"
cp "$manifest" "$OUTDIR/MANIFEST"
chmod 644 "$OUTDIR/MANIFEST"
cat "$OUTDIR/MANIFEST" >&2

# What travels: tracked and untracked-not-ignored files, and the bundle.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
bundle=$(du -sb "$OUTDIR" | cut -f1)
total=$((tree + bundle))
awk -v t="$tree" -v b="$bundle" -v l="$LIMIT_MIB" 'BEGIN {
  printf "gpu-bundle: working tree %.1f MiB + bundle %.1f MiB = %.1f MiB (limit %d MiB)\n", t / 1048576, b / 1048576, (t + b) / 1048576, l }' >&2
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu-bundle: over the device tool's $LIMIT_MIB MiB" >&2
  exit 1
fi
