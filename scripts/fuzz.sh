#!/usr/bin/env bash
# Builds the cargo-fuzz targets in tests/fuzz and runs each for a bounded
# time against a copy of the committed corpus (the repo stays clean), then
# prints one line per target and fails if any target crashed.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_PARALLEL   targets run at once (default: number of CPUs, at most 4)
#   FUZZ_TARGETS    space-separated subset (default: every target)
#   FUZZ_SANITIZER  address (default) or none
#   FUZZ_MERGE=1    merge inputs that found new coverage back into
#                   tests/fuzz/corpus (for maintainers; CI leaves it unset)
#
# Only a stable toolchain is installed, and cargo-fuzz needs nightly-only
# flags (-Zsanitizer, sancov passes), so it runs with RUSTC_BOOTSTRAP=1.
# The stable toolchain ships the ASan runtime, so the default sanitizer
# works. Crash inputs land in tests/fuzz/artifacts/<target>/ (git-ignored).
set -euo pipefail

cd "$(dirname "$0")/.."
FUZZ_DIR=tests/fuzz
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-address}
CPUS=$(nproc 2>/dev/null || echo 2)
PARALLEL=${FUZZ_PARALLEL:-$((CPUS < 4 ? CPUS : 4))}
ALL_TARGETS="manifest bitfield names chunk_ranges token"
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
CARGO_FUZZ_VERSION=0.13.2

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

started=$(date +%s)
echo "fuzz: building targets (sanitizer: $SANITIZER)"
if [ "$TARGETS" = "$ALL_TARGETS" ]; then
    cargo fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER"
else
    for target in $TARGETS; do
        cargo fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" "$target"
    done
fi
bin_dir="$FUZZ_DIR/target/x86_64-unknown-linux-gnu/release"
echo "fuzz: built in $(( $(date +%s) - started )) s; running each target for ${SECONDS_PER_TARGET} s, $PARALLEL at a time"

work=$(mktemp -d -t p2p-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Runs one target against a scratch copy of its corpus; its exit status is
# libFuzzer's (non-zero on a crash, a timeout or running out of memory).
run_target() {
    local target=$1
    local corpus="$work/corpus/$target"
    local artifacts="$FUZZ_DIR/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "$FUZZ_DIR/corpus/$target" ]; then
        cp -R "$FUZZ_DIR/corpus/$target/." "$corpus/"
    fi
    # The outer timeout is a backstop for a hung process; libFuzzer's own
    # -max_total_time ends a healthy run.
    timeout --kill-after=10 $((SECONDS_PER_TARGET + 60)) \
        "$bin_dir/$target" \
        -max_total_time="$SECONDS_PER_TARGET" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        -artifact_prefix="$artifacts/" \
        "$corpus" >"$work/$target.log" 2>&1
}

# Exactly one line per target: runs, coverage and corpus size, or where
# the crash input is.
summarise() {
    local target=$1 status=$2 log="$work/$target.log"
    local runs cov corp
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*' || true)
    corp=$(grep -o 'corp: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*' || true)
    if [ "$status" = 0 ]; then
        printf 'fuzz: %-13s ok      %10s runs  cov %5s  corpus %4s  in %s s\n' \
            "$target" "${runs:-?}" "${cov:-?}" "${corp:-?}" "$SECONDS_PER_TARGET"
    else
        local artifact
        artifact=$(grep -o "$FUZZ_DIR/artifacts/$target/[^ ]*" "$log" | tail -n1 || true)
        printf 'fuzz: %-13s FAILED  exit %s  input %s\n' "$target" "$status" "${artifact:-none}"
    fi
}

declare -A status_of
running=0
for target in $TARGETS; do
    if [ "$running" -ge "$PARALLEL" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    # The status goes through a file: `wait -n` above may already have
    # reaped this job.
    ( set +e; run_target "$target"; echo $? >"$work/$target.status" ) &
    running=$((running + 1))
done
wait || true

failed=0
for target in $TARGETS; do
    status_of[$target]=$(cat "$work/$target.status" 2>/dev/null || echo missing)
    if [ "${status_of[$target]}" != 0 ]; then
        failed=1
    fi
done

for target in $TARGETS; do
    summarise "$target" "${status_of[$target]}"
done
for target in $TARGETS; do
    if [ "${status_of[$target]}" != 0 ]; then
        echo "---- $target: last lines of the libFuzzer log"
        tail -n 40 "$work/$target.log"
    fi
done

if [ "${FUZZ_MERGE:-}" = 1 ] && [ "$failed" -eq 0 ]; then
    # Minimise committed + new inputs into a fresh directory (only inputs
    # that add coverage survive), keep the hand-written seeds, and replace.
    for target in $TARGETS; do
        committed="$FUZZ_DIR/corpus/$target"
        merged="$work/merged/$target"
        mkdir -p "$committed" "$merged"
        "$bin_dir/$target" -merge=1 "$merged" "$committed" "$work/corpus/$target" \
            >"$work/$target.merge.log" 2>&1
        cp "$committed"/seed-* "$merged/" 2>/dev/null || true
        rm -rf "$committed"
        cp -R "$merged" "$committed"
        echo "fuzz: merged $target: $(find "$committed" -type f | wc -l) inputs"
    done
fi

echo "fuzz: finished in $(( $(date +%s) - started )) s"
exit "$failed"
