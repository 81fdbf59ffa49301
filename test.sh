#!/usr/bin/env bash
# Runs every test: unit tests and end-to-end tests against real namespaces,
# seccomp and cgroups (needs root). Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")"
# Debian packages sbx builds, tests and benchmarks against: installed here when missing.
packages=(libseccomp-dev libcap-dev libfuse3-dev fuse3 pkg-config bubblewrap util-linux iproute2 hyperfine python3)
missing=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${packages[@]}" 2>&1 | awk '$1 != "ii" { print $NF }' || true)
if [[ -n $missing ]]; then
    echo "==> apt-get install" $missing >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >&2
fi
command -v swift >/dev/null || { echo "sbx: swift (6.x) is not on PATH: install the Swift toolchain first" >&2; exit 1; }
swift build --build-tests
swift test --skip-build
