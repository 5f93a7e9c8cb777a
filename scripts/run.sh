#!/usr/bin/env bash
# Builds Leasehold and starts a local three-node cluster of separate
# processes: the client gRPC API on 127.0.0.1:7070-7072, metrics and
# readiness on 127.0.0.1:7080-7082, the node-to-node gRPC API on
# 127.0.0.1:7090-7092, data under ./leasehold-cluster. Ctrl-C stops it
# gracefully. Extra arguments go to `leasehold cluster` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One target dir for running, testing and benchmarking: RocksDB builds once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leasehold-target}"
cargo build --release --locked --bin leasehold
exec "$CARGO_TARGET_DIR/release/leasehold" cluster "$@"
