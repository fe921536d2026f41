#!/usr/bin/env bash
# Builds imperium, the test vassal and the harness in release mode, then runs
# the side-by-side benchmark against `uwsgi --emperor`. Arguments go to the
# harness, e.g. `bench/run.sh -n 1000` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p imperium -p imperium-testkit -p imperium-bench
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/imperium-bench" "$@"
