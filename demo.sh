#!/usr/bin/env bash
# Builds sbx (release) if needed and shows a jail at work: an untrusted
# command tries to read secrets, reach the network and write outside its
# workspace (all refused), then does its real job inside the workspace.
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
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (sbx creates cgroups and user namespaces)" >&2; exit 1; }

echo "==> building sbx (release)"
swift build -c release --static-swift-stdlib 2>&1 | grep -E "error|warning: unre|Compiling|Build complete" | tail -3
SBX=$PWD/.build/release/sbx

WS=$(mktemp -d /tmp/sbx-demo.XXXXXX)
trap 'rm -rf "$WS"' EXIT
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

printf '\nAll done: no process, mount or cgroup of the demo is left behind.\n'
