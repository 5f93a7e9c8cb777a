#!/usr/bin/env bash
# The one gate: formatting, lints with warnings denied, and every test.
# Everything builds in the release profile, so tests, chaos runs and
# benchmarks share one build of the dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# One target dir for tests, runs and benchmarks: RocksDB builds once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leasehold-target}"

cargo fmt --all --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo test --release --workspace --all-targets --locked
scripts/chaos.sh
scripts/bench.sh --smoke
