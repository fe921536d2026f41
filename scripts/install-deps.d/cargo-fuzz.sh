#!/usr/bin/env bash
# cargo-fuzz for scripts/fuzz.sh (docs/fuzzing.md), when a nightly toolchain
# is there to run it (about a minute to build). Never fatal: without it the
# fuzz step says that it is skipped and why; the build and tests need
# neither.
set -uo pipefail
if ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "cargo-fuzz.sh: no nightly toolchain: the fuzz step will be skipped"
  exit 0
fi
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz.sh: $(cargo +nightly fuzz --version) is already installed"
  exit 0
fi
echo "cargo-fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
if ! cargo install cargo-fuzz --locked -q; then
  echo "cargo-fuzz.sh: cargo install cargo-fuzz failed: the fuzz step will be skipped"
fi
exit 0
