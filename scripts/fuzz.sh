#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for a bounded time
# each. See docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS]        seconds per target (or FUZZ_SECONDS); 10 by default
#   FUZZ_TARGETS="zmq kv"            only these targets
#   FUZZ_TARGET_DIR=...              cargo target dir (default /var/tmp/imperium-fuzz-target)
#   FUZZ_CORPUS_DIR=...              where new inputs are kept between runs
#                                    (default /var/tmp/imperium-fuzz-corpus); the
#                                    committed seeds in fuzz/corpus/ are only read
#   FUZZ_SANITIZER=address           cargo fuzz's --sanitizer (default none: the code
#                                    is safe Rust; panics, overflows and aborts are
#                                    what is caught)
#
# Without a nightly toolchain or cargo-fuzz it says so and exits 0: a missing
# tool never fails CI, and never passes silently. A crash (a panic, an
# overflow, a timeout, running out of memory) makes it exit 1 and print the
# path of the crashing input (under fuzz/artifacts/TARGET/).
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:-${FUZZ_SECONDS:-10}}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "fuzz: error: seconds per target must be a positive integer, not '$secs'" >&2
    exit 2
fi
target_dir=${FUZZ_TARGET_DIR:-/var/tmp/imperium-fuzz-target}
corpus_dir=${FUZZ_CORPUS_DIR:-/var/tmp/imperium-fuzz-corpus}
sanitizer=${FUZZ_SANITIZER:-none}

skip() {
    echo "fuzz: skipped: $*"
    exit 0
}

command -v rustup >/dev/null 2>&1 || skip "no rustup, so no nightly toolchain (cargo-fuzz needs nightly)"
rustup toolchain list 2>/dev/null | grep -q '^nightly' \
    || skip "no nightly toolchain (rustup toolchain list; install it with: rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 \
    || skip "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"

# the workspace's CARGO_TARGET_DIR (.ci/run sets one) is for stable builds
export CARGO_TARGET_DIR=$target_dir
fuzz=(cargo +nightly fuzz)

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir fuzz)
fi
[ "${#targets[@]}" -gt 0 ] || { echo "fuzz: error: no fuzz targets found in fuzz/" >&2; exit 1; }

echo "fuzz: $(cargo +nightly fuzz --version), $(rustc +nightly --version)"
echo "fuzz: ${#targets[@]} targets, $secs s each, sanitizer $sanitizer, target dir $target_dir"
start=$(date +%s)
if ! "${fuzz[@]}" build --fuzz-dir fuzz -s "$sanitizer" 2>&1 | tail -n 20; then
    echo "fuzz: FAILED: the fuzz targets do not build" >&2
    exit 1
fi
echo "fuzz: built in $(( $(date +%s) - start )) s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$corpus_dir/$t" "fuzz/corpus/$t"
    log=$logs/$t.log
    t0=$(date +%s)
    # new inputs go to the first corpus dir (outside the clone); the seeds
    # are read only. stdin is /dev/null so that nothing can wait on it.
    "${fuzz[@]}" run --fuzz-dir fuzz -s "$sanitizer" "$t" "$corpus_dir/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        </dev/null >"$log" 2>&1
    rc=$?
    runs=$(grep -o '^stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*')
    if [ "$rc" -eq 0 ]; then
        echo "fuzz: $t: ok ($(( $(date +%s) - t0 )) s, ${runs:-?} runs, coverage ${cov:-?}, corpus $(ls "$corpus_dir/$t" | wc -l) kept)"
    else
        echo "fuzz: $t: CRASH (exit $rc)"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|deadly signal|timeout|out-of-memory' "$log" | head -n 5 | sed 's/^/    /'
        input=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/^Test unit written to //')
        if [ -n "$input" ]; then
            echo "    crashing input: $input"
            echo "    reproduce: cargo +nightly fuzz run --fuzz-dir fuzz -s $sanitizer $t $input"
        else
            echo "    (no input written; the last lines of the log:)"
            tail -n 15 "$log" | sed 's/^/    /'
        fi
        failed+=("$t")
    fi
done

echo "fuzz: done in $(( $(date +%s) - start )) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (crashing inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: every target ran $secs s without a crash"
