#!/usr/bin/env bash
# BranchFS benchmark: fork and commit latency of sbx branches, and the same file-system workloads
# on four views of one tree, side by side: the native directory (a copy), kernel overlayfs,
# fuse-overlayfs and an sbx branch (sandboxd's FUSE view). Synthetic trees of 1k, 10k and 100k
# small files; the systems run interleaved (every round runs every system once per workload, in
# an order that rotates each round); caches are dropped before every cold measurement and before
# every round of file creation. Workloads are timed by a small C driver (bench/fsbench.c,
# compiled into the temp dir on every run); bench/branchfs-report.py prints the tables.
#
#   bench/branchfs.sh                          # builds sandboxd and sbx (release, .build-bench), full run
#   ROUNDS=1 SIZES="1000 10000" bench/branchfs.sh
#   SBX_BIN=/path/to/sbx SANDBOXD_BIN=/path/to/sandboxd bench/branchfs.sh   # skip the build
#
# Environment:
#   SIZES (1000 10000 100000)  tree sizes in files (10 files per directory, 100 B - 8 KiB each)
#   ROUNDS (3)                 rounds of every workload on trees below 100k files
#   ROUNDS_LARGE (3)           rounds on trees of 100k files or more
#   EXTRAS_SIZE (10000)        the one tree size that also gets the 1 GiB write/read, git status
#                              and make -j2 workloads ("none": skip them)
#   BIG_MIB (1024)             size of the sequential write/read file
#   CREATE_FILES (5000)        files in the create/stat/unlink workload (4 KiB each)
#   FORKS (30), COMMITS (10)   fork and commit latency samples per tree size and client
#   GIT_REPO                   a git repository to clone for `git status` (default: swift-nio's
#                              bare repo under /opt/swift-packages when present, else the tree's
#                              files committed into a new repository)
#   TMPBASE (/tmp)             where the temp dir goes (needs a few GiB, on a real disk, not tmpfs)
#   CC (cc)
# Prints the tables and writes them, with raw samples, to bench/results/branchfs-<UTC time>.json.
# A measurement that fails is recorded as a failure (never as a time) and the run goes on; exit
# status 3 when any failed or a commit left wrong contents in the workspace.
# Needs root (mounts, drop_caches). Cleans up every mount, process and file it made, also on
# Ctrl-C or error.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

SIZES=${SIZES:-"1000 10000 100000"}
ROUNDS=${ROUNDS:-3}
ROUNDS_LARGE=${ROUNDS_LARGE:-3}
EXTRAS_SIZE=${EXTRAS_SIZE:-10000}
BIG_MIB=${BIG_MIB:-1024}
CREATE_FILES=${CREATE_FILES:-5000}
FORKS=${FORKS:-30}
COMMITS=${COMMITS:-10}
TMPBASE=${TMPBASE:-/tmp}
CC=${CC:-cc}
for v in ROUNDS ROUNDS_LARGE BIG_MIB CREATE_FILES FORKS COMMITS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "branchfs: $v must be a positive integer, got '${!v}'" >&2; exit 2; }
done
for n in $SIZES; do [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "branchfs: SIZES must be positive integers, got '$n'" >&2; exit 2; }; done
[[ $EXTRAS_SIZE == none || $EXTRAS_SIZE =~ ^[1-9][0-9]*$ ]] || { echo "branchfs: EXTRAS_SIZE must be a size or 'none'" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "branchfs: needs root (overlay mounts, drop_caches)" >&2; exit 2; }
if [[ -z ${GIT_REPO:-} && -d /opt/swift-packages/apple/swift-nio.git ]]; then GIT_REPO=/opt/swift-packages/apple/swift-nio.git; fi
GIT_REPO=${GIT_REPO:-}

# --- 1. tools ---------------------------------------------------------------------------------
need=()
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v "$CC" >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
command -v git >/dev/null || need+=(git)
[[ -x /usr/bin/python3 ]] || need+=(python3)
if [[ -z ${SBX_BIN:-} || -z ${SANDBOXD_BIN:-} ]]; then
    for p in libseccomp-dev libcap-dev libfuse3-dev pkg-config; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || need+=("$p")
    done
fi
if ((${#need[@]})); then
    echo "==> installing ${need[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || { echo "branchfs: the kernel has no overlay file system" >&2; exit 1; }

# --- 2. sandboxd and sbx (our own scratch path: others build in .build) -------------------------
if [[ -z ${SBX_BIN:-} || -z ${SANDBOXD_BIN:-} ]]; then
    echo "==> swift build -c release --scratch-path .build-bench (sandboxd, sbx)" >&2
    "$repo/bench/swift-build.sh" -c release --scratch-path .build-bench --product sandboxd >&2
    if ! "$repo/bench/swift-build.sh" -c release --scratch-path .build-bench --product sbx >&2; then
        # sbx links with -static-executable; when a dependency drags in FoundationEssentials its
        # own static dependencies are missing from the link line. Name them and retry.
        echo "branchfs: warning: sbx failed to link; retrying with -l_FoundationCollections -l_FoundationCShims" >&2
        "$repo/bench/swift-build.sh" -c release --scratch-path .build-bench --product sbx \
            -Xlinker -l_FoundationCollections -Xlinker -l_FoundationCShims >&2
    fi
    SBX_BIN=${SBX_BIN:-$repo/.build-bench/release/sbx}
    SANDBOXD_BIN=${SANDBOXD_BIN:-$repo/.build-bench/release/sandboxd}
fi
# The source the binaries were built from (at build time: others may commit during the run).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain -- Sources Package.swift 2>/dev/null) ]] || commit+="-dirty"
SBX_BIN=$(realpath "$SBX_BIN")
SANDBOXD_BIN=$(realpath "$SANDBOXD_BIN")
[[ -x $SBX_BIN && -x $SANDBOXD_BIN ]] || { echo "branchfs: $SBX_BIN or $SANDBOXD_BIN is not an executable" >&2; exit 2; }

# --- 3. temp dir, cleanup ------------------------------------------------------------------------
biggest=0
for n in $SIZES; do ((n > biggest)) && biggest=$n; done
need_kib=$(( biggest * 6 * 4 * 3 / 2 + 1500000 ))   # ~6 KiB/file on disk x (tree + copy + deltas), + slack
[[ $EXTRAS_SIZE != none ]] && need_kib=$(( need_kib + BIG_MIB * 1024 * 2 ))
avail_kib=$(df -Pk "$TMPBASE" | awk 'NR == 2 { print $4 }')
if ((avail_kib < need_kib)); then
    echo "branchfs: $TMPBASE has $((avail_kib / 1024)) MiB free, this run needs about $((need_kib / 1024)) MiB" >&2
    exit 1
fi
[[ $(stat -f -c %T "$TMPBASE") != tmpfs ]] || echo "branchfs: warning: $TMPBASE is tmpfs: cold figures mean nothing there" >&2

tmp=$(mktemp -d "$TMPBASE/branchfs-bench.XXXXXX")
mounts=()         # every mount point this script made, in order
daemon_pid=""     # the sandboxd this script started, if running
daemon_mnt=""
ref_pid=""        # the reference sandboxd (empty workspace) of the latency phase, if running
ref_mnt=""

mounted_under_tmp() { awk -v t="$tmp/" '{ gsub(/\\040/, " ", $5); if (index($5, t) == 1) print $5 }' /proc/self/mountinfo; }

stop_sandboxd() { # PID MOUNT: SIGTERM, then SIGKILL after 20 s; detaches a mount left behind
    local pid=$1 mnt=$2
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "branchfs: warning: sandboxd $pid ignored SIGTERM for 20 s; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    if [[ -n $mnt ]] && mountpoint -q "$mnt" 2>/dev/null; then
        echo "branchfs: warning: sandboxd left its mount $mnt behind; detaching it" >&2
        umount -l "$mnt" 2>/dev/null || true
    fi
}
stop_daemon() { stop_sandboxd "$daemon_pid" "$daemon_mnt"; daemon_pid=""; daemon_mnt=""; }
stop_ref_daemon() { stop_sandboxd "$ref_pid" "$ref_mnt"; ref_pid=""; ref_mnt=""; }

unmount_ours() {
    local i m
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        m=${mounts[i]}
        if mountpoint -q "$m" 2>/dev/null; then umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; fi
    done
    mounts=()
}

# Proactive reclaim: this VM's kernel runs DAMON (kdamond) with a "pageout" scheme that evicts
# page cache from physical regions that look idle (sampled every 0.5 s, aggregated over 5 s).
# A FUSE view caches each file twice (its own pages and the backing file's, allocated side by
# side); the backing copy is never touched again, so whole regions look cold and the view's warm
# pages go with them: a "warm" pass then re-reads thousands of files, more the longer a pass
# takes (traced here: 4,653 FUSE pages evicted by kdamond during one pass over 100k files).
# Warm means cached, for every system alike: pause DAMON for the run and restore it at exit.
paused_damon=()
pause_damon() {
    local state
    for state in /sys/kernel/mm/damon/admin/kdamonds/*/state; do
        [[ -w $state && $(cat "$state") == on ]] || continue
        echo off >"$state" && paused_damon+=("$state")
    done
    ((${#paused_damon[@]} == 0)) || echo "branchfs: DAMON paused for the run (${paused_damon[*]}), restored at exit" >&2
}
resume_damon() {
    local state
    for state in "${paused_damon[@]}"; do echo on >"$state" 2>/dev/null || echo "branchfs: warning: could not turn $state back on" >&2; done
    paused_damon=()
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    resume_damon
    stop_daemon
    stop_ref_daemon
    unmount_ours
    # Only mounts below our own temp dir: anything there is ours (a crashed sandboxd's, say).
    local left
    while IFS= read -r left; do [[ -n $left ]] && umount -l "$left" 2>/dev/null; done < <(mounted_under_tmp | sort -r)
    if [[ -z $(mounted_under_tmp) ]]; then
        rm -rf "$tmp"
    else
        echo "branchfs: warning: mounts remain under $tmp; not removing it:" >&2
        mounted_under_tmp >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "branchfs: interrupted" >&2; exit 130' INT
trap 'echo "branchfs: terminated" >&2; exit 143' TERM

pause_damon
FSB=$tmp/fsbench
"$CC" -O2 -Wall -o "$FSB" bench/fsbench.c
samples=$tmp/samples.tsv
: >"$samples"
wrong_commits=0   # commits whose result in the workspace differs from what the branch wrote
rec() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$samples"; }   # KIND SIZE WORKLOAD SYSTEM ROUND MS

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
first() { printf '%s' "${1%% *}"; }
failures=0
out=""
# try SIZE WORKLOAD SYSTEM ROUND CMD...: runs CMD (an fsbench command), records the first number
# of its output as the sample; on failure records a "fail" sample, warns, and returns 1.
try() {
    local n=$1 w=$2 s=$3 r=$4 rc=0
    shift 4
    out=$("$@" 2>"$tmp/try.err") || rc=$?
    if ((rc == 0)); then
        local v=${out%%$'\n'*}
        rec fs "$n" "$w" "$s" "$r" "${v%% *}"
        return 0
    fi
    failures=$((failures + 1))
    rec fail "$n" "$w" "$s" "$r" 0
    echo "branchfs: $n files, $w on $s, round $r failed (exit $rc): $(head -c 300 "$tmp/try.err")" >&2
    return 1
}

read -r load1 _ </proc/loadavg
cpus=$(nproc)
if awk -v l="$load1" -v c="$cpus" 'BEGIN { exit !(l > c / 2) }'; then
    echo "branchfs: warning: load average $load1 on $cpus CPUs; absolute times will be noisy (ratios less so)" >&2
fi
echo "sandboxd: $SANDBOXD_BIN"
echo "sbx: $SBX_BIN"
echo "host: $(uname -r), $cpus CPUs, load $load1; DAMON paused: ${#paused_damon[@]} kdamond(s); fuse-overlayfs $(dpkg-query -W -f='${Version}' fuse-overlayfs 2>/dev/null); temp dir $tmp ($(stat -f -c %T "$TMPBASE"))"
echo

# --- 4. sandboxd ---------------------------------------------------------------------------------
sock=""
ref_sock=""
launched=""
launch_sandboxd() { # WORKSPACE STATE SOCKET: starts sandboxd (pid in $launched), waits until it answers
    "$SANDBOXD_BIN" --socket "$3" --state "$2" --workspace "$1" >"$2.log" 2>&1 &
    launched=$!
    for _ in $(seq 200); do
        [[ -S $3 ]] && "$FSB" rpc "$3" '{"jsonrpc":"2.0","id":"ping","method":"status","params":{}}' >/dev/null 2>&1 && return 0
        kill -0 "$launched" 2>/dev/null || break
        sleep 0.05
    done
    echo "branchfs: sandboxd did not come up:" >&2
    cat "$2.log" >&2
    exit 1
}
start_daemon() { # WORKSPACE STATE
    sock=$(dirname "$2")/sandboxd.sock
    daemon_mnt=$2/mnt
    launch_sandboxd "$1" "$2" "$sock"
    daemon_pid=$launched
}
# A second sandboxd on an empty workspace, forked in turn with the tree's during the latency
# phase: a fork's cost against the tree's size, each size against the same minutes' fork of an
# empty workspace (this VM's speed drifts more between minutes than a fork could grow).
start_ref_daemon() { # DIR
    mkdir -p "$1/ws"
    ref_sock=$1/sandboxd.sock
    ref_mnt=$1/state/mnt
    launch_sandboxd "$1/ws" "$1/state" "$ref_sock"
    ref_pid=$launched
}
rpc() { # REQUEST-ID METHOD PARAMS-JSON -> "ms<TAB>response"; fails on an error response
    "$FSB" rpc "$sock" "{\"jsonrpc\":\"2.0\",\"id\":\"$1\",\"method\":\"$2\",\"params\":$3}"
}
ref_rpc() { # the same, to the reference sandboxd
    "$FSB" rpc "$ref_sock" "{\"jsonrpc\":\"2.0\",\"id\":\"$1\",\"method\":\"$2\",\"params\":$3}"
}
branch_id() { sed -n 's/.*"branches":\[{"id":"\([^"]*\)".*/\1/p' <<<"$1"; }
branch_path() { sed -n 's/.*"branches":\[{[^}]*"path":"\([^"]*\)".*/\1/p' <<<"$1"; }

# --- 5. latency: fork and commit ----------------------------------------------------------------
latency() { # SIZE WORKSPACE
    local n=$1 ws=$2 i out ms id path via want got
    for i in 1 2 3; do  # warm-up: first connection, first view
        out=$(rpc "warm-c-$i" branch.create '{}')
        rpc "warm-a-$i" branch.abort "{\"branch\":\"$(branch_id "$out")\"}" >/dev/null
        out=$(ref_rpc "warm-rc-$i" branch.create '{}')
        ref_rpc "warm-ra-$i" branch.abort "{\"branch\":\"$(branch_id "$out")\"}" >/dev/null
    done
    for ((i = 1; i <= FORKS; i++)); do
        out=$(rpc "raw-fork-$i" branch.create '{}')
        rec lat "$n" fork_rpc sbx "$i" "${out%%$'\t'*}"
        id=$(branch_id "$out")
        out=$(rpc "raw-abort-$i" branch.abort "{\"branch\":\"$id\"}")
        rec lat "$n" abort_rpc sbx "$i" "${out%%$'\t'*}"
        out=$(ref_rpc "ref-fork-$i" branch.create '{}')
        rec lat "$n" fork_rpc_empty sbx "$i" "${out%%$'\t'*}"
        ref_rpc "ref-abort-$i" branch.abort "{\"branch\":\"$(branch_id "$out")\"}" >/dev/null
        out=$("$FSB" spawn "$SBX_BIN" branch create --json --socket "$sock")
        ms=${out%%$'\n'*}
        rec lat "$n" fork_sbx sbx "$i" "$ms"
        id=$(branch_id "$out")
        [[ -n $id ]] || { echo "branchfs: sbx branch create printed no id: $out" >&2; exit 1; }
        out=$("$FSB" spawn "$SBX_BIN" branch abort "$id" --socket "$sock")
        rec lat "$n" abort_sbx sbx "$i" "${out%%$'\n'*}"
    done
    for ((i = 1; i <= COMMITS; i++)); do
        for via in sbx rpc; do
            out=$(rpc "setup-$via-$i" branch.create '{}')
            id=$(branch_id "$out")
            path=$(branch_path "$out")
            "$FSB" touch "$path/files/d000/s00" 10 "$i$via" >/dev/null   # 10 small changed files
            if [[ $via == sbx ]]; then
                out=$("$FSB" spawn "$SBX_BIN" branch commit "$id" --socket "$sock") ||
                    { echo "branchfs: sbx branch commit failed: $out" >&2; exit 1; }
                rec lat "$n" commit_sbx sbx "$i" "${out%%$'\n'*}"
            else
                out=$(rpc "raw-commit-$i" branch.commit "{\"branch\":\"$id\"}") ||
                    { echo "branchfs: branch.commit failed: $out" >&2; exit 1; }
                rec lat "$n" commit_rpc sbx "$i" "${out%%$'\t'*}"
            fi
            # The committed files must be exactly what the branch wrote (open with O_TRUNC, then write).
            want="changed by branchfs bench, seed $i$via, file f"
            got=$(head -c 200 "$ws/files/d000/s00/f0.txt")
            if [[ $got != "$want"0.txt ]]; then
                wrong_commits=$((wrong_commits + 1))
                ((wrong_commits > 1)) || echo "branchfs: warning: after commit $i ($via) the workspace's f0.txt is not what the branch wrote: '${got:0:80}...' ($(stat -c %s "$ws/files/d000/s00/f0.txt") bytes)" >&2
            fi
        done
    done
}

# --- 6. workloads ------------------------------------------------------------------------------
SYSTEMS=(native kovl fovl sbx)
declare -A root

gen_cproj() { # DIR: 200 C files + main.c + Makefile
    local d=$1 i j
    mkdir -p "$d"
    for ((i = 0; i < 200; i++)); do
        {
            printf '#include <stdint.h>\n#include <string.h>\n'
            for ((j = 0; j < 12; j++)); do
                printf 'static uint64_t h%d_%d(const char *s, uint64_t k) { uint64_t v = %d; for (size_t n = strlen(s); n; n--) { v = v * 131 + (uint8_t)s[n - 1] + k; if (v %% 7 == %d) v ^= v >> 3; } return v; }\n' "$i" "$j" "$((i * 31 + j))" "$((j % 7))"
            done
            printf 'uint64_t f%d(const char *s) { uint64_t a = 0;' "$i"
            for ((j = 0; j < 12; j++)); do printf ' a += h%d_%d(s, a);' "$i" "$j"; done
            printf ' return a; }\n'
        } >"$d/f$i.c"
    done
    {
        printf '#include <stdio.h>\n#include <stdint.h>\n'
        for ((i = 0; i < 200; i++)); do printf 'uint64_t f%d(const char *);\n' "$i"; done
        printf 'int main(void) { uint64_t a = 0;\n'
        for ((i = 0; i < 200; i++)); do printf ' a += f%d("sbx");\n' "$i"; done
        printf ' printf("%%llu\\n", (unsigned long long)a); return 0; }\n'
    } >"$d/main.c"
    printf 'CFLAGS = -O2 -g\nSRCS = $(wildcard *.c)\nOBJS = $(SRCS:.c=.o)\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n%%.o: %%.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\nclean:\n\trm -f prog *.o\n' >"$d/Makefile"
}

order_for_round() { # ROUND -> the systems, rotated by ROUND
    local r=$1 k=${#SYSTEMS[@]} i
    for ((i = 0; i < k; i++)); do printf '%s ' "${SYSTEMS[(r + i) % k]}"; done
}

run_size() { # SIZE
    local n=$1 d=$tmp/n$1 rounds=$ROUNDS extras=0 out ms r s o x want got
    ((n >= 100000)) && rounds=$ROUNDS_LARGE
    [[ $EXTRAS_SIZE != none && $n -eq $EXTRAS_SIZE ]] && extras=1
    mkdir -p "$d"
    local ws=$d/ws
    echo "==> $n files: generating the tree" >&2
    mkdir -p "$ws"
    out=$("$FSB" gen "$ws/files" "$n" 20251122)
    echo "    $(first "$out") ms, $(awk '{ printf "%.1f MiB", $3 / 1048576 }' <<<"$out")" >&2
    if ((extras)); then
        if [[ -n $GIT_REPO ]]; then
            git clone -q --no-hardlinks "$GIT_REPO" "$ws/repo" >&2
        else
            cp -a "$ws/files" "$ws/repo"
            git -C "$ws/repo" init -q && git -C "$ws/repo" add -A &&
                git -C "$ws/repo" -c user.name=bench -c user.email=bench@localhost commit -qm tree
        fi
        gen_cproj "$ws/cproj"
        rec info "$n" git_files - 0 "$(git -C "$ws/repo" ls-files | wc -l)"
    fi

    echo "==> $n files: fork and commit latency ($FORKS forks, $COMMITS commits per client)" >&2
    # Let the writeback of the tree just generated finish first: a commit's fsyncs would
    # otherwise queue behind hundreds of MiB of the benchmark's own dirty data.
    sync
    mkdir -p "$d/sbxd"
    start_daemon "$ws" "$d/sbxd/state"
    start_ref_daemon "$d/empty"
    latency "$n" "$ws"
    stop_ref_daemon
    cp "$d/sbxd/state/audit.jsonl" "$tmp/audit-$n.jsonl"

    echo "==> $n files: views" >&2
    local t0
    t0=$("$FSB" spawn cp -a "$ws" "$d/native")
    rec setup "$n" view native 1 "${t0%%$'\n'*}"
    root[native]=$d/native
    mkdir -p "$d/kovl/upper" "$d/kovl/work" "$d/kovl/merged"
    t0=$("$FSB" spawn mount -t overlay overlay -o "lowerdir=$ws,upperdir=$d/kovl/upper,workdir=$d/kovl/work" "$d/kovl/merged")
    mounts+=("$d/kovl/merged")
    rec setup "$n" view kovl 1 "${t0%%$'\n'*}"
    root[kovl]=$d/kovl/merged
    mkdir -p "$d/fovl/upper" "$d/fovl/work" "$d/fovl/merged"
    # (fuse-overlayfs 1.10 says "unknown argument ignored: lazytime" on stderr: noise)
    t0=$("$FSB" spawn fuse-overlayfs -o "lowerdir=$ws,upperdir=$d/fovl/upper,workdir=$d/fovl/work" "$d/fovl/merged" 2>"$d/fovl.log")
    mounts+=("$d/fovl/merged")
    rec setup "$n" view fovl 1 "${t0%%$'\n'*}"
    root[fovl]=$d/fovl/merged
    out=$(rpc view branch.create '{}')
    rec setup "$n" view sbx 1 "${out%%$'\t'*}"
    root[sbx]=$(branch_path "$out")
    for s in kovl fovl; do mountpoint -q "${root[$s]}" || { echo "branchfs: $s did not mount" >&2; exit 1; }; done
    # first lookup after the view exists (fuse-overlayfs scans at start-up; BranchFS builds views lazily)
    for s in "${SYSTEMS[@]}"; do
        drop_caches
        out=$("$FSB" spawn stat -c %i "${root[$s]}/files/d000/s00/f0.txt")
        rec setup "$n" first_lookup "$s" 1 "${out%%$'\n'*}"
    done
    # Every view must show the same tree (a broken view is fast and wrong).
    want=""
    for s in "${SYSTEMS[@]}"; do
        got=$("$FSB" read "${root[$s]}/files")
        got=${got#* }
        [[ -z $want ]] && want=$got
        [[ $got == "$want" ]] || { echo "branchfs: $s shows '$got' (files bytes), native '$want'" >&2; exit 1; }
    done

    for ((r = 1; r <= rounds; r++)); do
        echo "==> $n files: round $r/$rounds" >&2
        o=$(order_for_round "$r")
        # A failing measurement is recorded as a failure (never as a time) and the run goes on.
        # cold: right after drop_caches; 2nd: the pass right after it (FUSE views still settle
        # attributes then); warm: the pass after that (steady state)
        for s in $o; do   # walk + lstat
            drop_caches
            try "$n" walk_cold "$s" "$r" "$FSB" walk "${root[$s]}/files" || continue
            try "$n" walk_2nd "$s" "$r" "$FSB" walk "${root[$s]}/files" || continue
            try "$n" walk_warm "$s" "$r" "$FSB" walk "${root[$s]}/files" || continue
        done
        for s in $o; do   # walk + read every file
            drop_caches
            try "$n" read_cold "$s" "$r" "$FSB" read "${root[$s]}/files" || continue
            try "$n" read_2nd "$s" "$r" "$FSB" read "${root[$s]}/files" || continue
            try "$n" read_warm "$s" "$r" "$FSB" read "${root[$s]}/files" || continue
        done
        for s in $o; do   # create, lstat, unlink CREATE_FILES new 4 KiB files
            drop_caches
            try "$n" create "$s" "$r" "$FSB" create "${root[$s]}/new-$r" "$CREATE_FILES" 4096 || continue
            read -r _ x y <<<"$out"
            rec fs "$n" stat_new "$s" "$r" "$x"; rec fs "$n" unlink "$s" "$r" "$y"
        done
        ((extras)) || continue
        for s in $o; do   # git status in a real checkout: cold, then warm (after one untimed run)
            drop_caches
            try "$n" git_status_cold "$s" "$r" "$FSB" spawn git -C "${root[$s]}/repo" status --porcelain || continue
            [[ $out == *$'\n'?* ]] && echo "branchfs: warning: git status on $s is not clean: ${out#*$'\n'}" >&2
            git -C "${root[$s]}/repo" status --porcelain >/dev/null 2>&1 || true
            try "$n" git_status_warm "$s" "$r" "$FSB" spawn git -C "${root[$s]}/repo" status --porcelain || continue
        done
        for s in $o; do   # make -j2 of 200 C files
            make -s -C "${root[$s]}/cproj" clean >/dev/null 2>&1 || true
            sync
            try "$n" make_j2 "$s" "$r" "$FSB" spawn make -s -j2 -C "${root[$s]}/cproj" || continue
        done
        for s in $o; do   # BIG_MIB sequential write (with fsync), cold read, warm read
            drop_caches
            if try "$n" big_write "$s" "$r" "$FSB" write "${root[$s]}/big.bin" "$BIG_MIB"; then
                drop_caches
                try "$n" big_read_cold "$s" "$r" "$FSB" readfile "${root[$s]}/big.bin" &&
                    try "$n" big_read_warm "$s" "$r" "$FSB" readfile "${root[$s]}/big.bin" || true
            fi
            rm -f "${root[$s]}/big.bin" 2>/dev/null || true
        done
    done
    if [[ -n $daemon_pid ]]; then   # what sandboxd holds open after the workloads (a leak shows here)
        rec info "$n" sandboxd_open_fds sbx 0 "$(find "/proc/$daemon_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
        rec info "$n" sandboxd_deleted_fds sbx 0 "$(find "/proc/$daemon_pid/fd" -mindepth 1 -maxdepth 1 -lname '*(deleted)' 2>/dev/null | wc -l)"
        rec info "$n" sandboxd_rss_kib sbx 0 "$(awk '/^VmRSS/ { print $2 }' "/proc/$daemon_pid/status" 2>/dev/null || echo 0)"
    fi

    echo "==> $n files: teardown" >&2
    stop_daemon
    unmount_ours
    rm -rf "$d"
}

started=$(date -u +%FT%TZ)
for n in $SIZES; do run_size "$n"; done

# --- 7. report and JSON ------------------------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
outjson=bench/results/branchfs-$stamp.json
/usr/bin/python3 bench/branchfs-report.py --samples "$samples" --audit-dir "$tmp" --out "$outjson" \
    --meta started="$started" commit="$commit" kernel="$(uname -r)" cpus="$cpus" loadavg_1m_at_start="$load1" \
    cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    fs="$(stat -f -c %T "$TMPBASE")" sandboxd="$SANDBOXD_BIN" sbx="$SBX_BIN" \
    wrong_commits="$wrong_commits" failures="$failures" damon_paused="${#paused_damon[@]}" fuse_overlayfs="fuse-overlayfs $(dpkg-query -W -f='${Version}' fuse-overlayfs 2>/dev/null)" git_repo="${GIT_REPO:-generated}" \
    sizes="$SIZES" rounds="$ROUNDS" rounds_large="$ROUNDS_LARGE" extras_size="$EXTRAS_SIZE" \
    big_mib="$BIG_MIB" create_files="$CREATE_FILES" forks="$FORKS" commits="$COMMITS"
echo "wrote $outjson"
if ((failures)); then
    echo "branchfs: $failures measurements failed (see the warnings above and the fail counts in the tables)" >&2
    exit 3
fi
if ((wrong_commits)); then
    echo "branchfs: $wrong_commits commits left wrong contents in the workspace (see the warning above)" >&2
    exit 3
fi
