#!/usr/bin/env bash
# imperium quickstart: spawn, reload and destroy a real uWSGI vassal.
# Needs root for apt on a fresh Debian 12 machine (or uwsgi-core and
# uwsgi-plugin-python3 already installed) and the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
need=()
for p in uwsgi-core uwsgi-plugin-python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# The quickstart needs only the file monitors: this build needs nothing but
# the Rust toolchain (the full build also needs protoc and libzmq, which
# scripts/install-deps.sh installs).
say "building imperium (file monitors only)"
target=${CARGO_TARGET_DIR:-target}/quickstart
CARGO_TARGET_DIR=$target cargo build --release -q -p imperium --no-default-features --features dir
bin=$target/release/imperium
work=$(mktemp -d /tmp/imperium-quickstart.XXXXXX)
mkdir "$work/vassals"
get() { python3 -c 'import sys,urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8081/", timeout=2).read().decode().strip())' 2>/dev/null; }
wait_for() { for _ in $(seq 100); do out=$(get || true); [[ "$out" == *"$1"* ]] && { echo "   -> $out"; return 0; }; sleep 0.1; done; echo "   timed out waiting for '$1'"; return 1; }
say "starting: imperium --emperor $work/vassals"
"$bin" --emperor "$work/vassals" >"$work/imperium.log" 2>&1 &
emp=$!
trap 'kill -TERM $emp 2>/dev/null; wait $emp 2>/dev/null; rm -rf "$work"' EXIT
sleep 0.3
say "spawn: copying examples/vassals/hello.ini into the directory"
cp examples/vassals/app.py "$work/vassals/"
cp examples/vassals/hello.ini "$work/vassals/"
wait_for hello
say "reload: changing the greeting in hello.ini (graceful: same master, new workers)"
sed -i 's/GREETING=hello/GREETING=bonjour/' "$work/vassals/hello.ini"
wait_for bonjour
say "destroy: removing hello.ini"
rm "$work/vassals/hello.ini"
for _ in $(seq 100); do get >/dev/null || break; sleep 0.1; done
get >/dev/null && { echo "   still answering?"; exit 1; } || echo "   -> no answer: the vassal is gone"
say "stopping imperium (SIGTERM)"
kill -TERM $emp; wait $emp || true
trap - EXIT
say "what imperium logged"
grep -E 'spawned|has been spawned|reload|stop the|removed|RAGNAROK|buried' "$work/imperium.log" | sed 's/^/   /'
rm -rf "$work"
