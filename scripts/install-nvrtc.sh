#!/usr/bin/env bash
# Installs NVRTC (NVIDIA's runtime compiler) for cuda/kernels' generator and its CI check
# (TestGeneratedKernelsAreCurrent), without a GPU, CUDA toolkit or root: Debian's
# libnvrtc11.2 and libnvrtc-builtins11.8 from the non-free component, downloaded with apt
# into a private directory through a private sources list (the archive URI and suite
# already configured in this machine's apt sources, plus non-free), unpacked with dpkg -x
# into ${XDG_CACHE_HOME:-~/.cache}/servelab/nvrtc. The system's sources, lists and cache
# are never touched. Cached: a second run finds the libraries and does nothing. Prints
# the directory (cuda/nvrtc finds it there, or in $SERVELAB_NVRTC_DIR).
set -euo pipefail
dest=${SERVELAB_NVRTC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/servelab/nvrtc}
packages=(libnvrtc11.2 libnvrtc-builtins11.8)
# SERVELAB_APT_ETC replaces /etc/apt for reading the sources; --print-archive prints the
# archive found (URI SUITE KEYRING) and stops (both for checking the parsing).
etc=${SERVELAB_APT_ETC:-/etc/apt}
have() { compgen -G "$dest/usr/lib/*/libnvrtc.so.11.2" >/dev/null && compgen -G "$dest/usr/lib/*/libnvrtc-builtins.so.11.8" >/dev/null; }
if [ "${1:-}" != --print-archive ] && have; then
  echo "$dest"
  exit 0
fi
command -v apt-get >/dev/null || { echo "install-nvrtc: apt-get not found: NVRTC comes from Debian's non-free packages ${packages[*]}" >&2; exit 1; }

# The Debian archive this machine uses: the first "deb" source whose suite is a release
# (no -updates/-security/-backports suffix), from deb822 .sources files or one-line
# sources.list files. Prints "URI SUITE KEYRING" (KEYRING may be empty).
archive() {
  local f
  for f in "$etc"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: stanzas separated by blank lines; fields Types, URIs, Suites, Signed-By.
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
          n = split(suites, s, " "); split(uris, u, " ")
          for (i = 1; i <= n; i++) if (s[i] !~ /-/) { print u[1], s[i], signed; exit 0 }
        }
        types = uris = suites = signed = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { line = $0; key = line; sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val) }
      key == "Types" { types = val } key == "URIs" { uris = val } key == "Suites" { suites = val }
      key == "Signed-By" && val ~ /^\// { signed = val }
      END { flush() }' "$f"
  done
  for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # one-line: deb [options] URI SUITE COMPONENT...
    awk '
      $1 != "deb" { next }
      {
        signed = ""; i = 2
        if ($2 ~ /^\[/) {
          for (; i <= NF; i++) {
            if ($i ~ /^\[?signed-by=/) { v = $i; sub(/^\[?signed-by=/, "", v); sub(/\]$/, "", v); signed = v }
            if ($i ~ /\]$/) { i++; break }
          }
        }
        if ($(i+1) !~ /-/) { print $i, $(i+1), signed; exit 0 }
      }' "$f"
  done
}
if [ "${1:-}" = --print-archive ]; then archive | head -n1; exit 0; fi
read -r uri suite keyring < <(archive | head -n1) || true
if [ -z "${uri:-}" ]; then
  echo "install-nvrtc: no Debian release source (a deb line or .sources stanza) in /etc/apt: cannot find the archive for ${packages[*]}" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/servelab-nvrtc.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
opt=""
if [ -n "${keyring:-}" ] && [ -r "$keyring" ]; then opt="[signed-by=$keyring] "; fi
echo "deb ${opt}$uri $suite non-free" >"$work/sources.list"
echo "install-nvrtc: downloading ${packages[*]} from $uri $suite non-free into $dest" >&2
aptopts=(-q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1
  -o APT::Sandbox::User="$(id -un)")
apt-get "${aptopts[@]}" update >&2
(cd "$work/debs" && apt-get "${aptopts[@]}" download "${packages[@]}" >&2)
for deb in "$work"/debs/*.deb; do
  dpkg -x "$deb" "$work/root"
done
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"
mv "$work/root" "$dest.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
have || { echo "install-nvrtc: the packages did not contain libnvrtc.so.11.2 and libnvrtc-builtins.so.11.8" >&2; exit 1; }
echo "$dest"
