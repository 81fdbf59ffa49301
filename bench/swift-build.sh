#!/usr/bin/env bash
# `swift build "$@"` with a TMPDIR of its own, removed afterwards: SwiftPM leaves
# TemporaryDirectory.* behind in $TMPDIR on every build.
set -uo pipefail
scratch=$(mktemp -d /tmp/sbx-swiftpm.XXXXXX) || exit 1
trap 'rm -rf "$scratch"' EXIT
TMPDIR=$scratch swift build "$@"
