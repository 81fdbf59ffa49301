#!/usr/bin/env bash
# Runs every test: unit tests and end-to-end tests against real namespaces,
# seccomp and cgroups (needs root). Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/deps.sh
swift build --build-tests
swift test --skip-build
