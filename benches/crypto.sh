#!/usr/bin/env bash
# Seal and open throughput of an 8 MiB chunk (GB/s), with ring as a reference.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p benches --bin bench-crypto
