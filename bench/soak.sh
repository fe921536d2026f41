#!/usr/bin/env bash
# Builds imperium, the test vassal and the soak harness in release mode, then
# runs the soak (docs/reliability.md), e.g. `bench/soak.sh --minutes 30`.
# Not run by CI. Arguments go to `imperium-soak` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p imperium -p imperium-testkit -p imperium-bench
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/imperium-soak" "$@"
