#!/usr/bin/env bash
# Builds sbx (release) if needed and shows the service at work:
# 1. a jail: an untrusted command tries to read secrets, reach the network and
#    write outside its workspace (all refused), then does its real job;
# 2. branches: sandboxd forks a workspace into three copy-on-write branches,
#    each is edited differently (one by a jailed command), the first commit
#    wins and the losers are refused.
set -euo pipefail
cd "$(dirname "$0")"
./test.sh --install-only   # the Debian packages it needs, when missing
command -v swift >/dev/null || { echo "sbx: swift (6.x) is not on PATH: install the Swift toolchain first" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (sbx creates cgroups and user namespaces)" >&2; exit 1; }

echo "==> building sbx (release)"
scratch=$(mktemp -d /tmp/sbx-swiftpm.XXXXXX) # SwiftPM leaves TemporaryDirectory.* in $TMPDIR
TMPDIR=$scratch swift build -c release --static-swift-stdlib 2>&1 | grep -E "error|warning: unre|Compiling|Build complete" | tail -3
rm -rf "$scratch"
SBX=$PWD/.build/release/sbx

WS=$(mktemp -d /tmp/sbx-demo.XXXXXX)
DEMO=$(mktemp -d /tmp/sbx-demo-branches.XXXXXX)
chmod 0711 "$DEMO"   # the jailed user must traverse it to reach the branch under state/mnt
DAEMON=
cleanup() {
    if [[ -n $DAEMON ]] && kill -0 "$DAEMON" 2>/dev/null; then kill -TERM "$DAEMON"; wait "$DAEMON" || true; fi
    rm -rf "$WS" "$DEMO"
}
trap cleanup EXIT
echo 'print("hello from the workspace")' > "$WS/app.py"
chown -R 65534:65534 "$WS"   # the jail's root maps to this unprivileged host user

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step "sbx run --workspace $WS -- sh -c 'cat /etc/shadow'"
"$SBX" run --workspace "$WS" -- sh -c 'cat /etc/shadow' || echo "(exit $?: refused, /etc/shadow does not exist in the jail)"

step "sbx run --workspace $WS -- python3 -c 'socket.create_connection((\"1.1.1.1\", 53), timeout=2)'"
"$SBX" run --workspace "$WS" -- python3 -c 'import socket; socket.create_connection(("1.1.1.1", 53), timeout=2)' 2>&1 | tail -1 || true
echo "(refused: the jail has its own empty network namespace, only lo)"

step "sbx run --workspace $WS -- sh -c 'echo pwned > /usr/bin/pwned; echo pwned > /etc/pwned; id'"
"$SBX" run --workspace "$WS" -- sh -c 'echo pwned > /usr/bin/pwned; echo pwned > /etc/pwned; id' || true
echo "(refused: the system is read-only; uid 0 inside is host uid 65534 outside)"

step "sbx run --timeout 1 -- sh -c 'sleep 60 & setsid sleep 60 & sleep 60'"
set +e; "$SBX" run --timeout 1 -- sh -c 'sleep 60 & setsid sleep 60 & sleep 60'; code=$?; set -e
echo "(exit $code: timed out, the whole tree is gone: $(pgrep -c -x sleep || true) sleep processes left)"

step "sbx run --json --max-output 200 -- sh -c 'seq 1 100000'"
"$SBX" run --json --max-output 200 -- sh -c 'seq 1 100000'

step "sbx run --workspace $WS -- sh -c 'python3 app.py > out.txt && cat out.txt'"
"$SBX" run --workspace "$WS" -- sh -c 'python3 app.py > out.txt && cat out.txt'
echo "(written into the workspace, owned on the host by: $(stat -c '%u:%g' "$WS/out.txt"))"

printf '\n\033[1m== Branches: fork, diverge, first commit wins ==\033[0m\n'
mkdir -p "$DEMO/project"
printf '1.0\n' > "$DEMO/project/VERSION"
printf 'echo "hello from $(cat VERSION)"\n' > "$DEMO/project/greet.sh"
printf 'old notes\n' > "$DEMO/project/NOTES"
chown -R 65534:65534 "$DEMO/project"
export SBX_SOCKET=$DEMO/sandboxd.sock
SANDBOXD=$PWD/.build/release/sandboxd
step "sandboxd --workspace $DEMO/project --state $DEMO/state &"
"$SANDBOXD" --workspace "$DEMO/project" --state "$DEMO/state" --socket "$SBX_SOCKET" 2>"$DEMO/sandboxd.log" &
DAEMON=$!
for _ in $(seq 100); do [[ -S $SBX_SOCKET ]] && break; sleep 0.05; done
"$SBX" status

step "sbx branch create --count 3"
mapfile -t BRANCHES < <("$SBX" branch create --count 3 | cut -f1)
"$SBX" branch list
A=${BRANCHES[0]} B=${BRANCHES[1]} C=${BRANCHES[2]}
PA=$("$SBX" branch path "$A") PB=$("$SBX" branch path "$B") PC=$("$SBX" branch path "$C")

step "echo 2.0 > $PA/VERSION                       # branch $A, by any host tool"
echo 2.0 > "$PA/VERSION"
step "sbx run --workspace $PB -- sh -c 'echo 3.0 > VERSION; rm NOTES; sh greet.sh'   # branch $B, jailed"
"$SBX" run --workspace "$PB" -- sh -c 'echo 3.0 > VERSION; rm NOTES; sh greet.sh'
step "echo feature > $PC/FEATURE                   # branch $C"
echo feature > "$PC/FEATURE"
echo "(the workspace still says: $(cat "$DEMO/project/VERSION"); each branch sees only its own edits: $A=$(cat "$PA/VERSION") $B=$(cat "$PB/VERSION") $C=$(cat "$PC/VERSION"))"
step "echo 9.9 > $DEMO/state/mnt/main/VERSION     # main is frozen while it has live branches"
echo 9.9 > "$DEMO/state/mnt/main/VERSION" || echo "(refused)"

step "sbx branch diff $B"
"$SBX" branch diff "$B"
step "sbx branch commit $B"
"$SBX" branch commit "$B"
echo "(the workspace now says: $(cat "$DEMO/project/VERSION"); NOTES: $(ls "$DEMO/project/NOTES" 2>/dev/null || echo gone))"
step "sbx branch commit $A"
set +e; "$SBX" branch commit "$A"; code=$?; set -e
echo "(exit $code: the losing sibling is refused and nothing of it reaches the workspace)"
step "echo late > $PC/FEATURE"
echo late > "$PC/FEATURE" || echo "(refused: $C was invalidated by $B's commit)"

step "sbx branch create; echo 4.0 > <branch>/VERSION; echo 3.1 > $DEMO/project/VERSION   # a host tool edits the workspace itself"
D=$("$SBX" branch create | cut -f1)
echo 4.0 > "$("$SBX" branch path "$D")/VERSION"
sleep 0.02 # past the fork's clock tick: ctimes tell what changed after it
echo 3.1 > "$DEMO/project/VERSION"
"$SBX" branch info "$D" | grep external_changes || true
step "sbx branch commit $D"
set +e; "$SBX" branch commit "$D"; code=$?; set -e
echo "(exit $code: the host's edit is not silently overwritten; the workspace still says $(cat "$DEMO/project/VERSION"), and $D keeps its work)"

step "kill -TERM sandboxd"
kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=
echo "(stopped: $(grep -c "$DEMO" /proc/self/mountinfo || true) mounts left; workspace files: $(cd "$DEMO/project" && echo *))"

printf '\nAll done: no process, mount or cgroup of the demo is left behind.\n'
