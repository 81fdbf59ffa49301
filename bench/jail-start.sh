#!/usr/bin/env bash
# Jail start-up benchmark: `sbx run` against bubblewrap, `unshare` and a plain
# spawn, interleaved in one run (every round runs every variant once, in an
# order that rotates each round), timed from spawn to reap by a small C harness
# (bench/spawnbench.c, compiled into a temp dir on every run).
#
#   bench/jail-start.sh                 # builds sbx (release, static stdlib), 300 rounds
#   ROUNDS=100 bench/jail-start.sh      # fewer rounds
#   SBX_BIN=/path/to/sbx bench/jail-start.sh   # skip the build; sbx-init must sit next to sbx
#
# Environment: ROUNDS (300), WARMUP (10 discarded rounds), SBX_BIN, CC (cc),
# SBX_PROFILE_PATH (defaults to the repo's profiles/).
# Prints two tables (/bin/true; sh -c 'echo hi') and writes them, with raw
# samples, to bench/results/jail-start-<UTC time>.json. Needs root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

ROUNDS=${ROUNDS:-300}
WARMUP=${WARMUP:-10}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "jail-start: ROUNDS must be a positive integer, got '$ROUNDS'" >&2; exit 2; }
[[ $WARMUP =~ ^[0-9]+$ ]] || { echo "jail-start: WARMUP must be a non-negative integer, got '$WARMUP'" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || echo "jail-start: warning: not root; sbx needs root for cgroups and id maps" >&2

# --- 1. tools ---------------------------------------------------------------
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v unshare >/dev/null || need+=(util-linux)
command -v "${CC:-cc}" >/dev/null || need+=(gcc libc6-dev)
if [[ -z ${SBX_BIN:-} ]]; then  # building sbx needs its libraries
    for p in libseccomp-dev libcap-dev libfuse3-dev pkg-config; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || need+=("$p")
    done
fi
if ((${#need[@]})); then
    echo "==> installing ${need[*]}" >&2
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

# --- 2. sbx -----------------------------------------------------------------
if [[ -z ${SBX_BIN:-} ]]; then
    echo "==> swift build -c release --static-swift-stdlib" >&2
    "$repo/bench/swift-build.sh" -c release --static-swift-stdlib >&2
    SBX_BIN=$repo/.build/release/sbx
fi
SBX_BIN=$(realpath "$SBX_BIN")
[[ -x $SBX_BIN ]] || { echo "jail-start: $SBX_BIN is not an executable" >&2; exit 2; }
[[ -x $(dirname "$SBX_BIN")/sbx-init ]] || { echo "jail-start: sbx-init must sit next to $SBX_BIN" >&2; exit 2; }
export SBX_PROFILE_PATH=${SBX_PROFILE_PATH:-$repo/profiles}

BWRAP=$(command -v bwrap)
UNSHARE=$(command -v unshare)
TRUE=/bin/true
SH=/bin/sh
bwrap_jail=("$BWRAP" --unshare-all --die-with-parent --new-session --ro-bind / / --proc /proc --dev /dev)

# --- 3. harness ---------------------------------------------------------------
tmp=$(mktemp -d /tmp/jail-start.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"${CC:-cc}" -O2 -Wall -o "$tmp/spawnbench" bench/spawnbench.c -lm

# Every variant must work before it is timed (a failing jail is fast and wrong).
check() { # EXPECTED_STDOUT CMD...
    local want=$1 out rc=0
    shift
    out=$("$@" </dev/null 2>"$tmp/err") || rc=$?
    if ((rc != 0)) || [[ $out != "$want" ]]; then
        echo "jail-start: preflight failed: $* (exit $rc, stdout '$out')" >&2
        cat "$tmp/err" >&2
        exit 1
    fi
}
check "" "$SBX_BIN" run -- "$TRUE"
check "" "${bwrap_jail[@]}" "$TRUE"
check "" "$UNSHARE" -Urmpf --mount-proc true
check "hi" "$SBX_BIN" run -- sh -c 'echo hi'
check "hi" "${bwrap_jail[@]}" sh -c 'echo hi'

count_cgroups() { find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -type d -path '*/sbx/*' 2>/dev/null | wc -l; }
cgroups_before=$(count_cgroups)
read -r load1 _ </proc/loadavg
cpus=$(nproc)
if awk -v l="$load1" -v c="$cpus" 'BEGIN { exit !(l > c / 2) }'; then
    echo "jail-start: warning: load average $load1 on $cpus CPUs; absolute times will be noisy (ratios less so)" >&2
fi

echo "sbx: $SBX_BIN"
echo "host: $(uname -r), $cpus CPUs, load $load1; $("$BWRAP" --version); $("$UNSHARE" --version)"
echo

# --- 4. /bin/true in a jail ---------------------------------------------------------
rc=0
"$tmp/spawnbench" -r "$ROUNDS" -w "$WARMUP" -b bwrap -p true -j "$tmp/true.json" \
    -t "jail start: /bin/true (wall ms, spawn to reap)" -- \
    sbx "$SBX_BIN" run -- "$TRUE" ::: \
    bwrap "${bwrap_jail[@]}" "$TRUE" ::: \
    unshare "$UNSHARE" -Urmpf --mount-proc true ::: \
    true "$TRUE" || rc=$?
((rc == 0 || rc == 3)) || exit "$rc"
echo

# --- 5. output capture: sh -c 'echo hi' ---------------------------------------
"$tmp/spawnbench" -r "$ROUNDS" -w "$WARMUP" -b bwrap -p sh -j "$tmp/echo.json" \
    -t "jail start + output: sh -c 'echo hi' (wall ms, spawn to reap)" -- \
    sbx "$SBX_BIN" run -- sh -c 'echo hi' ::: \
    bwrap "${bwrap_jail[@]}" sh -c 'echo hi' ::: \
    sh "$SH" -c 'echo hi' || rc=$?
((rc == 0 || rc == 3)) || exit "$rc"
echo

cgroups_after=$(count_cgroups)
if ((cgroups_after > cgroups_before)); then
    echo "jail-start: warning: $((cgroups_after - cgroups_before)) sbx cgroups left behind after the runs" >&2
fi

# --- 6. JSON -----------------------------------------------------------------
json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
out=bench/results/jail-start-$stamp.json
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain -- Sources Package.swift 2>/dev/null) ]] || commit+="-dirty"
{
    printf '{"benchmark":"jail-start","date":%s,"commit":%s,' "$(json_str "$(date -u +%FT%TZ)")" "$(json_str "$commit")"
    printf '"host":{"kernel":%s,"cpus":%d,"cpu_model":%s,"loadavg_1m_at_start":%s},' \
        "$(json_str "$(uname -r)")" "$cpus" \
        "$(json_str "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)")" "$load1"
    printf '"sbx":%s,"sbx_bytes":%d,"bwrap_version":%s,"unshare_version":%s,' \
        "$(json_str "$SBX_BIN")" "$(stat -c %s "$SBX_BIN")" \
        "$(json_str "$("$BWRAP" --version)")" "$(json_str "$("$UNSHARE" --version)")"
    printf '"rounds":%d,"warmup":%d,"sbx_cgroups_left_behind":%d,' "$ROUNDS" "$WARMUP" $((cgroups_after - cgroups_before))
    printf '"sections":{"true":'
    cat "$tmp/true.json"
    printf ',"echo_hi":'
    cat "$tmp/echo.json"
    printf '}}\n'
} >"$out"
echo "wrote $out"
exit "$rc"
