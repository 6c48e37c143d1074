#!/usr/bin/env bash
# Builds controller-gen (sigs.k8s.io/controller-tools, pinned in this module) into a cache
# outside the repository, keyed by version, unless it is there; prints its path.
set -euo pipefail
cd "$(dirname "$0")"
version=$(go list -m -f '{{.Version}}' sigs.k8s.io/controller-tools)
dir=${XDG_CACHE_HOME:-$HOME/.cache}/servelab/controller-tools-$version
if [ ! -x "$dir/controller-gen" ]; then
  echo "building controller-gen $version into $dir (cached afterwards)" >&2
  mkdir -p "$dir"
  go build -o "$dir/controller-gen.tmp" sigs.k8s.io/controller-tools/cmd/controller-gen
  mv "$dir/controller-gen.tmp" "$dir/controller-gen"
fi
echo "$dir/controller-gen"
