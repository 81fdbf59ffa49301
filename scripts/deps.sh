#!/usr/bin/env bash
# Installs the Debian packages sbx builds, tests and benchmarks against, when missing.
# Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail

SBX_PACKAGES=(libseccomp-dev libcap-dev libfuse3-dev fuse3 pkg-config bubblewrap util-linux iproute2 hyperfine python3)

missing=()
for p in "${SBX_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "==> installing ${missing[*]}" >&2
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi
command -v swift >/dev/null || { echo "sbx: swift (6.x) is not on PATH: install the Swift toolchain first" >&2; exit 1; }
