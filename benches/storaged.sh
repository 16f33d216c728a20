#!/usr/bin/env bash
# storaged under load on each metadata backend side by side (embedded SQLite, MongoDB on a local
# SecantusDB server that fsyncs every commit): creates/s, lookups/s and getattrs/s with 1 and 16
# clients, and chunk put/get MB/s, against the real daemon (release build) on a temp dir under
# $TMPDIR. Extra arguments go to every `storaged serve`. Needs scripts/setup.sh (SecantusDB).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p storaged --bin storaged
cargo run --quiet --release -p benches --bin bench-storaged -- "$@"
