#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, in-process integration
# tests, and the end-to-end tests that start the real binaries (which is why
# the binaries are built first). The PostgreSQL runs need
# P2P_TEST_POSTGRES_URL (see scripts/test-postgres.sh); without it they are
# skipped with a printed reason, except in CI where they must run.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
