#!/usr/bin/env bash
# Runs every test: unit tests and end-to-end tests against real namespaces,
# seccomp and cgroups (needs root). Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")"
# The Debian packages sbx builds and tests against; a new Debian 12 machine lacks the first
# four. Only the missing ones are installed. `./test.sh --install-only` stops after this step
# (demo.sh uses it). The benchmarks install their own peers (bubblewrap, fuse-overlayfs, ...).
packages=(libseccomp-dev libcap-dev libfuse3-dev fuse3 pkg-config util-linux iproute2 python3)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "==> apt-get install ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
pkg-config --exists libseccomp libcap fuse3 ||
    { echo "test.sh: libseccomp, libcap or fuse3 development files are still missing after apt-get" >&2; exit 1; }
[[ ${1:-} == --install-only ]] && exit 0
command -v swift >/dev/null || { echo "sbx: swift (6.x) is not on PATH: install the Swift toolchain first" >&2; exit 1; }
# SwiftPM and the test runner leave TemporaryDirectory.* behind in $TMPDIR: give them one of
# their own, removed on the way out.
scratch=$(mktemp -d /tmp/sbx-swiftpm.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
TMPDIR=$scratch swift build --build-tests
TMPDIR=$scratch swift test --skip-build
