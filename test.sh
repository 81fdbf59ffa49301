#!/usr/bin/env bash
# Runs every test: unit tests and end-to-end tests against real namespaces,
# seccomp and cgroups (needs root). Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")"
# Debian packages sbx builds, tests and benchmarks against, installed here when any is missing
# (a new Debian 12 machine has none of the first four). `./test.sh --install-only` stops after
# this step (demo.sh uses it).
# (dpkg-query fails on a package it has never heard of: its output still says so.)
if { dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' libseccomp-dev libcap-dev libfuse3-dev fuse3 \
        pkg-config bubblewrap util-linux iproute2 hyperfine python3 2>&1 || true; } | grep -qv '^ii '; then
    echo "==> apt-get install (missing Debian packages)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev libcap-dev libfuse3-dev fuse3 \
        pkg-config bubblewrap util-linux iproute2 hyperfine python3 >&2
fi
[[ ${1:-} == --install-only ]] && exit 0
command -v swift >/dev/null || { echo "sbx: swift (6.x) is not on PATH: install the Swift toolchain first" >&2; exit 1; }
swift build --build-tests
swift test --skip-build
