#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kube-scheduler from Go modules into
# a cache outside the repository, keyed by version, unless they are there already; prints the
# directory. The API tests find the binaries there (or in KUBEBUILDER_ASSETS, envtest's name).
# A cold build takes ~10-20 min on 2 cores and ~2.5 GB of memory; later runs return at once.
set -euo pipefail
cd "$(dirname "$0")"
version=v1.37.2
dir=${SERVELAB_K8S_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/servelab/k8s-$version}
mkdir -p "$dir"
# -trimpath is left out on purpose: it would stop these builds sharing go test's build cache.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$version"
build() { # name package
  if [ ! -x "$dir/$1" ]; then
    echo "building $1 $version into $dir (cached afterwards)" >&2
    go build -ldflags "$ldflags" -o "$dir/$1.tmp" "$2"
    mv "$dir/$1.tmp" "$dir/$1"
  fi
}
build etcd ./etcd
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
if [ "${1:-}" != "--api-only" ]; then
  build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
  build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
fi
echo "$dir"
